"""Classifier: training (fastText, TF-IDF), the verified artefact, one Scorer, evaluate, bad inputs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from classifier.artefact import ArtefactError, read_artefact
from classifier.cli import evaluate_main, train_main
from classifier.evaluate import compute_metrics
from classifier.labels import LabelError, read_labels
from classifier.scorer import Scorer
from classifier.text import normalize_text
from classifier.train import TrainConfig, stratified_split, train_model

GOOD = [
    "Photosynthesis is the process by which plants convert light energy into chemical energy. "
    "In this lesson we explain each step: light absorption by chlorophyll, the splitting of water, "
    "and the Calvin cycle that fixes carbon dioxide into sugar. Example: a leaf in sunlight.",
    "The Pythagorean theorem states that in a right triangle the square of the hypotenuse equals the sum "
    "of the squares of the other two sides. Worked example: with sides 3 and 4 the hypotenuse is 5.",
    "Cells are the basic unit of life. This chapter defines the cell membrane, the nucleus and mitochondria, "
    "explains how each organelle works, and ends with exercises for students to check understanding.",
    "Newton's second law explains that force equals mass times acceleration. We derive the formula, "
    "define each quantity with its unit, and solve an example problem step by step for the student.",
]
BAD = [
    "Buy cheap shoes now!!! Best prices, free shipping, click here, login, subscribe, cookie settings.",
    "Celebrity gossip: you won't believe what this star wore last night. Click for photos and more gossip.",
    "Home | About | Contact | Login | Register | Cart | Privacy policy | Terms of use | Sitemap",
    "Hot deals today only. Limited offer. Sign up for our newsletter and win a prize. Accept cookies.",
]


def labelled_rows() -> list[dict]:
    rows = []
    for rep in range(4):  # variants so each class has several examples
        for i, t in enumerate(GOOD):
            rows.append({"id": f"g{rep}{i}", "text": f"{t} Part {rep}.", "score": 3 + (i + rep) % 3, "domain": "web"})
        for i, t in enumerate(BAD):
            rows.append({"id": f"b{rep}{i}", "text": f"{t} Offer {rep}.", "score": (i + rep) % 3, "domain": "web"})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("labels") / "web.jsonl", labelled_rows())


@pytest.fixture(scope="module")
def ft_dir(tmp_path_factory, labels_file) -> str:
    out = tmp_path_factory.mktemp("models") / "ft"
    rc = train_main(["--labels", labels_file, "--domain", "web", "--output", str(out), "--cv-folds", "0",
                     "--params", '{"epoch": 30, "lr": 0.5, "dim": 16, "wordNgrams": 2}', "--no-progress"])
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def ft(ft_dir) -> Scorer:
    return Scorer.load(ft_dir)


# ----------------------------------------------------------------------------- training and the artefact


def test_fasttext_model_learns_the_labels(ft):
    s = ft.score(GOOD + BAD)
    assert s.score.dtype == np.float32 and s.int_score.dtype == np.int64 and s.keep.dtype == bool
    assert s.score[: len(GOOD)].mean() > s.score[len(GOOD):].mean() + 1.0
    assert ((0 <= s.score) & (s.score <= 5)).all()
    assert (s.keep == (s.score >= 3.0)).all()


def test_model_json_records_what_the_model_is(ft_dir, ft):
    info = read_artefact(ft_dir)
    assert info["kind"] == "fasttext" and info["domain"] == "web" and info["threshold"] == 3.0
    assert info["model_id"] == ft.model_id and info["version"] == ft.version and len(ft.version) == 16
    assert info["training_data"]["n"] == 32 and sum(info["training_data"]["label_distribution"].values()) == 32
    assert len(info["training_data"]["sha256"]) == 64
    assert info["hyperparameters"]["epoch"] == 30
    assert set(info["files"]) == {"model.bin"}


def test_training_is_deterministic(tmp_path, labels_file, ft):
    out = tmp_path / "again"
    train_main(["--labels", labels_file, "--domain", "web", "--output", str(out), "--cv-folds", "0",
                "--params", '{"epoch": 30, "lr": 0.5, "dim": 16, "wordNgrams": 2}', "--no-progress"])
    again = Scorer.load(out)
    assert again.version == ft.version
    np.testing.assert_array_equal(again.score(GOOD + BAD).score, ft.score(GOOD + BAD).score)


def test_cross_validation_and_holdout_are_recorded(tmp_path, labels_file):
    # TF-IDF: the same search/calibration/holdout code as fastText, at a fraction of the CI time
    config = TrainConfig(domain="web", kind="tfidf", cv_folds=2, holdout=0.25, progress=False)
    info = train_model(labels_file, str(tmp_path / "cv"), config)
    assert len(info["cross_validation"]["candidates"]) >= 2
    assert info["scoring"]["calibration"]["method"] == "isotonic-f1"
    holdout = info["evaluation"]["holdout"]
    assert holdout["n"] == 8 and 0.0 <= holdout["f1_at_3"] <= 1.0
    assert info["training_data"]["n"] == 24


def test_tfidf_baseline_trains_and_explains(tmp_path, labels_file):
    train_model(labels_file, str(tmp_path / "tfidf"), TrainConfig(domain="web", kind="tfidf", cv_folds=2, progress=False))
    scorer = Scorer.load(tmp_path / "tfidf")
    assert scorer.kind == "tfidf"
    s = scorer.score(GOOD + BAD).score
    assert s[: len(GOOD)].mean() > s[len(GOOD):].mean()
    terms = scorer.explain(BAD[0], top_k=5)
    assert len(terms) == 5 and all(isinstance(t, str) and isinstance(c, float) for t, c in terms)
    assert any(c < 0 for _, c in terms)


def test_existing_output_is_replaced_atomically(tmp_path, labels_file, ft_dir):
    out = tmp_path / "model"
    shutil.copytree(ft_dir, out)
    train_model(labels_file, str(out), TrainConfig(domain="web", kind="tfidf", cv_folds=0, progress=False))
    assert Scorer.load(out).kind == "tfidf"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old directories left behind


def test_corrupt_weights_are_refused(tmp_path, ft_dir):
    bad = tmp_path / "m"
    shutil.copytree(ft_dir, bad)
    with open(bad / "model.bin", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtefactError, match="sha256 .* does not match"):
        Scorer.load(bad)


def test_model_from_another_format_version_is_refused(tmp_path, ft_dir):
    bad = tmp_path / "m"
    shutil.copytree(ft_dir, bad)
    info = json.loads((bad / "model.json").read_text())
    info["format_version"] = 99
    (bad / "model.json").write_text(json.dumps(info))
    with pytest.raises(ArtefactError, match="format_version 99"):
        Scorer.load(bad)


def test_missing_or_broken_model_dirs_are_refused(tmp_path, ft_dir):
    with pytest.raises(ArtefactError, match="not found"):
        Scorer.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="no model.json"):
        Scorer.load(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(ft_dir, broken)
    (broken / "model.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="corrupt model.json"):
        Scorer.load(broken)
    missing = tmp_path / "missing"
    shutil.copytree(ft_dir, missing)
    (missing / "model.bin").unlink()
    with pytest.raises(ArtefactError, match="missing"):
        Scorer.load(missing)


# ----------------------------------------------------------------------------- scoring


def test_empty_and_huge_documents_score(ft):
    huge = (GOOD[0] + "\n") * (10_000_000 // len(GOOD[0]))
    assert len(huge) >= 9_900_000
    s = ft.score(["", "   \n\t ", huge, GOOD[0]])
    assert s.score[0] == 0.0 and s.score[1] == 0.0 and not s.keep[0]
    # a 10 MB document is read up to max_chars: it scores like its first max_chars characters
    assert s.score[2] == ft.score([huge[: ft.max_chars]]).score[0]


def test_batch_and_single_scores_are_identical(ft):
    texts = GOOD + BAD + ["", "x" * 50_000]
    batch = ft.score(texts).score
    single = np.array([ft.score([t]).score[0] for t in texts])
    np.testing.assert_array_equal(batch, single)
    ft_small = Scorer(ft.info, ft.backend)
    ft_small.batch_size = 3  # internal batching must not change anything either
    np.testing.assert_array_equal(ft_small.score(texts).score, batch)


def test_evaluate_cli_scores_through_the_same_scorer(tmp_path, ft, ft_dir, capsys):
    rows = labelled_rows()
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    assert evaluate_main(["--model", ft_dir, "--labels", path, "--json", "--plots", str(tmp_path / "plots")]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "f1_at_3", "precision_at_3", "recall_at_3", "macro_f1", "accuracy", "spearman", "mse"):
        assert key in out
    direct = compute_metrics(np.array([r["score"] for r in rows]), ft.score([r["text"] for r in rows]).score)
    assert out["n"] == len(rows)
    assert out["mse"] == direct["mse"] and out["f1_at_3"] == direct["f1_at_3"] and out["spearman"] == direct["spearman"]
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == [f"{ft.model_id}.confusion.png", f"{ft.model_id}.scores.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_evaluate_compares_several_models(tmp_path, ft_dir, labels_file, capsys):
    other = tmp_path / "tfidf"
    train_model(labels_file, str(other), TrainConfig(domain="web", kind="tfidf", cv_folds=0, progress=False))
    assert evaluate_main(["--model", f"{ft_dir},{other}", "--labels", labels_file, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 32 and [m["kind"] for m in out["models"]] == ["fasttext", "tfidf"]
    assert evaluate_main(["--model", f"{ft_dir},{other}", "--labels", labels_file]) == 0
    table = capsys.readouterr().out
    assert "| model | kind | n | f1_at_3" in table and "confusion matrix" in table


def test_explain_names_words_that_moved_the_score(ft):
    terms = ft.explain(GOOD[0], top_k=5)
    assert 1 <= len(terms) <= 5
    assert all(isinstance(t, str) and t in normalize_text(GOOD[0], ft.max_chars).split() for t, _ in terms)
    assert abs(terms[0][1]) >= abs(terms[-1][1])
    assert ft.explain("", top_k=5) == []


def test_scorer_is_thread_safe(ft):
    from concurrent.futures import ThreadPoolExecutor

    texts = GOOD + BAD
    expected = ft.score(texts).score
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ft.score(texts).score, range(16)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_bad_texts_to_score_are_named(ft):
    with pytest.raises(TypeError, match=r"texts\[1\]: text is missing"):
        ft.score(["fine", None])
    with pytest.raises(TypeError, match=r"texts\[0\]: text is missing"):
        ft.score([math.nan])
    with pytest.raises(TypeError, match="not one str"):
        ft.score("a single string")


# ----------------------------------------------------------------------------- bad label files


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "empty"),
        ([{"text": "a", "score": 7, "domain": "web"}], r"row 0: field 'score': 7 is outside the labels 0-5"),
        ([{"text": "a", "score": 2.5}], r"row 0: field 'score': 2.5 is outside"),
        ([{"text": "a", "score": "high"}], r"row 0: field 'score': expected an integer"),
        ([{"text": "a", "score": 1}, {"text": None, "score": 2}], r"row 1: field 'text' is missing"),
        ([{"text": "a", "score": 1}, {"text": "b", "score": 4, "domain": "code"}], r"row 1: field 'domain' is 'code'"),
        ([{"body": "a", "score": 1}], r"missing field 'text'"),
    ],
)
def test_bad_label_files_are_named(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    with pytest.raises(LabelError, match=message) as err:
        read_labels(path, "web")
    assert "labels.jsonl" in str(err.value)


def test_nan_text_in_parquet_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"text": ["ok", None], "score": [1, 4]}), path)
    with pytest.raises(LabelError, match=r"labels.parquet: row 1: field 'text' is missing"):
        read_labels(str(path), "web")


def test_rows_the_labeller_could_not_parse_are_skipped(tmp_path):
    rows = [{"text": "a", "score": 1, "status": "ok"}, {"text": "b", "score": None, "status": "unparseable"}]
    labels = read_labels(write_jsonl(tmp_path / "l.jsonl", rows), "web")
    assert len(labels) == 1 and labels.skipped == 1


def test_untrainable_label_sets_are_refused_by_the_cli(tmp_path, capsys):
    one_side = write_jsonl(tmp_path / "low.jsonl", [{"text": f"doc {i}", "score": i % 3} for i in range(10)])
    assert train_main(["--labels", one_side, "--domain", "web", "--output", str(tmp_path / "m")]) == 2
    assert "no example at or above the threshold" in capsys.readouterr().err
    one_class = write_jsonl(tmp_path / "one.jsonl", [{"text": f"doc {i}", "score": 4} for i in range(10)])
    assert train_main(["--labels", one_class, "--domain", "web", "--output", str(tmp_path / "m")]) == 2
    assert "only class [4]" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert train_main(["--labels", str(empty), "--domain", "web", "--output", str(tmp_path / "m")]) == 2
    assert "empty.jsonl: label file is empty" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_evaluate_refuses_a_model_from_another_version(tmp_path, ft_dir, labels_file, capsys):
    bad = tmp_path / "m"
    shutil.copytree(ft_dir, bad)
    info = json.loads((bad / "model.json").read_text())
    info["format_version"] = 0
    (bad / "model.json").write_text(json.dumps(info))
    assert evaluate_main(["--model", str(bad), "--labels", labels_file]) == 2
    assert "format_version 0" in capsys.readouterr().err


def test_stratified_split_holds_out_every_class():
    scores = np.array([0] * 10 + [3] * 5 + [5])
    train, held = stratified_split(scores, 0.2, seed=1)
    assert sorted(np.bincount(scores[held], minlength=6)) == sorted([2, 0, 0, 1, 0, 0])
    assert 5 in scores[train]  # a single example stays in training
    assert len(set(train) | set(held)) == len(scores) and not set(train) & set(held)


def test_normalisation_is_single_line_and_bounded():
    text = "Hello,\tWorld!\nfoo(bar)\x00 " + "z" * 100
    assert normalize_text(text, max_chars=30, split_punctuation=True) == "hello , world ! foo ( bar ) zzzzzz"
    assert normalize_text(text, max_chars=30) == "hello,\tworld! foo(bar)\x00 zzzzzz"  # fastText splits \t and NUL itself
    assert "\n" not in normalize_text("a\nb\r\nc\u2028d", 100)
    assert normalize_text(" \n\r ", 100) == "" and normalize_text(" \t ", 100, split_punctuation=True) == ""
    with pytest.raises(TypeError):
        normalize_text(None, 10)
    with pytest.raises(TypeError):
        normalize_text(b"bytes", 10)


def test_f1_calibration_is_monotone_and_cuts_at_the_threshold():
    from classifier.scorer import apply_calibration
    from classifier.train import fit_calibration

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 5, 400)
    y = np.clip(np.round(raw * 0.8 + rng.normal(0, 0.8, 400)), 0, 5).astype(int)
    cal = fit_calibration(raw, y, "isotonic-f1", 3.0)
    assert np.all(np.diff(cal["y"]) >= 0) and min(cal["y"]) >= 0 and max(cal["y"]) <= 5
    plain = fit_calibration(raw, y, "isotonic", 3.0)
    keep = apply_calibration(raw, cal) >= 3.0
    np.testing.assert_array_equal(keep, apply_calibration(raw, plain) >= cal["cut"] - 1e-12)
    f1 = compute_metrics(y, apply_calibration(raw, cal))["f1_at_3"]
    assert f1 >= compute_metrics(y, apply_calibration(raw, plain))["f1_at_3"]
