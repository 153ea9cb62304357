"""Token counting for scored documents.

Budgets ("88B tokens of web") are stated in the pretraining tokenizer's
tokens, so the scoring job counts with that tokenizer when it is given
(`--tokenizer DIR`, a local folder with `tokenizer.json` or anything
`transformers.AutoTokenizer` loads offline). Without one it uses a documented
estimate: one token per 4 UTF-8 bytes, rounded up. That is the usual figure
for GPT-style BPE vocabularies on English prose (code and non-English text
run nearer 3 bytes/token, so the estimate under-counts them); the counter's
name is stamped into every stats file and the select manifest so a budget
solved with an estimate is never mistaken for an exact one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

BYTES_PER_TOKEN_ESTIMATE = 4


class TokenCounter(Protocol):
    name: str

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Number of tokens of each text (int64), without special tokens and without truncation."""
        ...


class ByteEstimateCounter:
    """ceil(utf-8 bytes / 4): cheap, deterministic, tokenizer-free."""

    name = f"estimate:utf8-bytes/{BYTES_PER_TOKEN_ESTIMATE}"

    def count(self, texts: Sequence[str]) -> np.ndarray:
        sizes = np.fromiter(
            (len(t.encode("utf-8", errors="surrogatepass")) for t in texts), dtype=np.int64, count=len(texts)
        )
        return -(-sizes // BYTES_PER_TOKEN_ESTIMATE)

    def count_arrow(self, texts) -> np.ndarray:
        """The same count straight from an Arrow string column (its UTF-8 bytes), without Python strings."""
        import pyarrow as pa
        import pyarrow.compute as pc

        sizes = pc.binary_length(texts.cast(pa.large_binary())).to_numpy(zero_copy_only=False).astype(np.int64)
        return -(-sizes // BYTES_PER_TOKEN_ESTIMATE)


class TokenizerCounter:
    """Exact counts with a tokenizer loaded from a local folder (never from a hub)."""

    def __init__(self, tokenizer_dir: str | os.PathLike):
        path = Path(tokenizer_dir)
        if not path.exists():
            raise ValueError(f"tokenizer folder {path} does not exist")
        tokenizer_json = path / "tokenizer.json" if path.is_dir() else path
        if tokenizer_json.is_file() and tokenizer_json.suffix == ".json":
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(tokenizer_json))
            # Counting must see the whole document, whatever the training-time max length.
            self._fast.no_truncation()
            self._fast.no_padding()
            self._hf = None
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            self._fast = None
            self._hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.name = f"tokenizer:{path.resolve().name}"

    def count(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self._fast is not None:
            encodings = self._fast.encode_batch(texts, add_special_tokens=False)
            return np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = self._hf(texts, add_special_tokens=False, truncation=False)["input_ids"]
        return np.array([len(x) for x in ids], dtype=np.int64)


def load_token_counter(tokenizer_dir: str | os.PathLike | None) -> TokenCounter:
    """The pretraining tokenizer when a folder is given, else the documented byte estimate."""
    if tokenizer_dir is None or str(tokenizer_dir) == "":
        return ByteEstimateCounter()
    return TokenizerCounter(tokenizer_dir)
