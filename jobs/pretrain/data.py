"""Ingestion for pretraining: corpus files -> documents -> tokens -> fixed-length sequences.

Reads what `edufilter select` writes (parquet shards with a `text` column and
`domain`/`source` provenance, beside a manifest.json) and any parquet or
JSONL(.gz) of `text`. Documents are grouped by a provenance column (`domain` by
default) so sources can be mixed by weight, the way phi-1.5-web mixed 80% web
with 20% code.

Two ways to feed the loop, both yielding `(seq_len,)` token arrays and both
with a position that a checkpoint can hold:

* `StreamingGroup`: reads, shuffles (file order + a bounded shuffle buffer) and
  tokenizes documents on the fly; memory is bounded by the shuffle buffer, not
  the corpus. Its position is (epoch, documents consumed, tokens consumed of the
  current document): resuming replays the deterministic document order without
  tokenizing the skipped documents.
* `MemmapGroup`: a token file written once by `pretokenize` and read through
  `np.memmap`; sequences are shuffled non-overlapping windows. Its position is
  (epoch, index into the epoch's permutation).

Documents are split into train and held-out by a hash of their text, so the
held-out documents are never trained on whatever the file layout or world size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from edufilter.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
TEXT_COLUMN = "text"
TOKENIZER_FILE = "tokenizer.json"
ALL_GROUP = "all"  # the one group when no mix is given
CORPUS_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


class CorpusError(ValueError):
    """A corpus that cannot feed training: missing, empty, unreadable or too short."""


class TokenizerError(ValueError):
    """A tokenizer directory that is missing files or lacks the end-of-text token."""


# --------------------------------------------------------------------------- corpus files


def find_corpus_files(path: str | os.PathLike) -> list[Path]:
    """Every parquet/JSONL file under `path` (or `path` itself), sorted; temp and hidden files skipped."""
    root = Path(path)
    if not root.exists():
        raise CorpusError(f"corpus {root} does not exist")
    if root.is_file():
        candidates = [root]
    else:
        candidates = sorted(p for p in root.rglob("*") if p.is_file())
    files = [
        p
        for p in candidates
        if p.name.endswith(CORPUS_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(root if root.is_dir() else root.parent).parts)
    ]
    if not files:
        raise CorpusError(f"corpus {root} holds no parquet or JSONL files (looked for {', '.join(CORPUS_SUFFIXES)})")
    return files


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_file_rows(path: Path, group_by: str) -> Iterator[tuple[str, str]]:
    """(group, text) for every document of one file, streamed (parquet batch by batch, JSONL line by line).

    Rows with a missing or empty text are skipped: they carry no tokens. A file without a
    text column, or a JSONL line that is not a JSON object, is an error naming file and row.
    """
    if path.suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            raise CorpusError(f"{path}: not a readable parquet file ({exc})") from exc
        names = parquet.schema_arrow.names
        if TEXT_COLUMN not in names:
            raise CorpusError(f"{path}: no '{TEXT_COLUMN}' column (columns: {', '.join(names)})")
        columns = [TEXT_COLUMN] + ([group_by] if group_by in names else [])
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column(TEXT_COLUMN).to_pylist()
            groups = batch.column(group_by).to_pylist() if group_by in names else [None] * len(texts)
            for text, group in zip(texts, groups):
                if text:
                    yield (str(group) if group is not None else ALL_GROUP), text
        return
    with _open_text(path) as handle:
        for row, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}: row {row} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}: row {row} is not a JSON object")
            text = record.get(TEXT_COLUMN)
            if isinstance(text, str) and text:
                group = record.get(group_by)
                yield (str(group) if group is not None else ALL_GROUP), text


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a stable function of its text alone."""
    if fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 1_000_000
    return bucket < fraction * 1_000_000


@dataclass(frozen=True)
class CorpusSpec:
    """Which documents feed training: the files, how they group, the mix and the held-out split."""

    files: tuple[str, ...]
    group_by: str = "domain"
    # group -> weight; empty means every document in one group, in its natural proportions.
    mix: tuple[tuple[str, float], ...] = ()
    heldout_fraction: float = 0.0

    @property
    def groups(self) -> list[str]:
        return [name for name, _ in self.mix] if self.mix else [ALL_GROUP]

    def group_of(self, raw_group: str) -> str | None:
        """The training group a row belongs to, or None when the mix leaves its group out."""
        if not self.mix:
            return ALL_GROUP
        return raw_group if raw_group in dict(self.mix) else None


def parse_mix(text: str | None) -> tuple[tuple[str, float], ...]:
    """`"web=0.8,code=0.2"` -> (("web", 0.8), ("code", 0.2)), weights normalised to sum to 1."""
    if not text:
        return ()
    pairs: list[tuple[str, float]] = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight <= 0:
            raise CorpusError(f"--mix expects name=positive_weight[,...], got {item!r} in {text!r}")
        pairs.append((name.strip(), weight))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise CorpusError(f"--mix names a group twice: {text!r}")
    total = sum(w for _, w in pairs)
    return tuple((n, w / total) for n, w in pairs)


def survey_corpus(spec: CorpusSpec) -> dict[str, Counter]:
    """Documents and characters per raw group and split, in one streaming pass (for checks and the log)."""
    docs: Counter = Counter()
    chars: Counter = Counter()
    for path in spec.files:
        for group, text in iter_file_rows(Path(path), spec.group_by):
            split = "heldout" if is_heldout(text, spec.heldout_fraction) else "train"
            docs[(group, split)] += 1
            chars[(group, split)] += len(text)
    return {"docs": docs, "chars": chars}


def iter_documents(
    spec: CorpusSpec,
    group: str,
    *,
    split: str,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
) -> Iterator[str]:
    """The texts of one group and split, in a deterministic shuffled order for (seed, epoch), for one rank.

    Shuffling is two-level so memory stays bounded: the file order is permuted per epoch, and
    documents pass through a buffer of `shuffle_buffer` texts from which one is drawn at random.
    Rank r keeps every world_size-th document of that order, so ranks see disjoint documents.
    """
    rng = random.Random(f"{seed}/{group}/{split}/{epoch}")  # str seeds hash stably across processes
    files = list(spec.files)
    if shuffle_buffer > 0:
        rng.shuffle(files)

    def in_order() -> Iterator[str]:
        for path in files:
            for raw_group, text in iter_file_rows(Path(path), spec.group_by):
                if spec.group_of(raw_group) != group:
                    continue
                if is_heldout(text, spec.heldout_fraction) != (split == "heldout"):
                    continue
                yield text

    def shuffled(texts: Iterator[str]) -> Iterator[str]:
        if shuffle_buffer <= 0:
            yield from texts
            return
        buffer: list[str] = []
        for text in texts:
            buffer.append(text)
            if len(buffer) >= shuffle_buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    yield from itertools.islice(shuffled(in_order()), rank, None, world_size)


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(directory: str | os.PathLike):
    """A `tokenizers.Tokenizer` from a local folder: `tokenizer.json`, or GPT-2 style `vocab.json` + `merges.txt`."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"tokenizer directory {directory} does not exist")
    if (directory / TOKENIZER_FILE).is_file():
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as exc:
            raise TokenizerError(f"{directory / TOKENIZER_FILE}: cannot be loaded ({exc})") from exc
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        tokenizer = ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))._tokenizer
    else:
        present = sorted(p.name for p in directory.iterdir())
        raise TokenizerError(
            f"tokenizer directory {directory} has neither {TOKENIZER_FILE} nor vocab.json + merges.txt"
            f" (it holds: {', '.join(present) or 'nothing'})"
        )
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise TokenizerError(f"tokenizer in {directory} has no {EOS_TOKEN} token to separate documents")
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_dir: str | os.PathLike):
    """Train a byte-level BPE (GPT-2/codegen style, as phi-1.5 uses) and save `tokenizer.json` atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Byte-level: every string is representable, so no document is ever lost to <unk>.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    with atomic_path(Path(output_dir) / TOKENIZER_FILE) as tmp:
        tokenizer.save(str(tmp))
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- sequence sources


@dataclass
class StreamingGroup:
    """Packs one group's documents (+EOS) into `seq_len` windows, tokenizing as it reads."""

    spec: CorpusSpec
    group: str
    tokenizer: object
    seq_len: int
    seed: int
    split: str = "train"
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000
    # Packed sequences held and drawn at random: without it consecutive sequences (and so a whole
    # micro-batch) come from the same long document. Held sequences are saved in the checkpoint.
    sequence_shuffle: int = 0
    epoch: int = 0
    docs_consumed: int = 0  # documents of this epoch fully packed already
    token_offset: int = 0  # tokens of the next document already packed
    draws: int = 0  # sequences drawn from the shuffle buffer so far
    _docs: Iterator[str] | None = field(default=None, repr=False)
    _tokens: np.ndarray | None = field(default=None, repr=False)
    _held: list = field(default_factory=list, repr=False)

    def _open_epoch(self) -> None:
        self._docs = iter_documents(
            self.spec, self.group, split=self.split, seed=self.seed, epoch=self.epoch,
            rank=self.rank, world_size=self.world_size, shuffle_buffer=self.shuffle_buffer,
        )
        # Replay the deterministic order up to the saved position without tokenizing.
        skipped = sum(1 for _ in itertools.islice(self._docs, self.docs_consumed))
        if skipped < self.docs_consumed:
            raise CorpusError(
                f"group {self.group!r}: saved position {self.docs_consumed} documents is past the end of"
                f" epoch {self.epoch} ({skipped} documents); has the corpus changed since the checkpoint?"
            )
        self._tokens = None

    def _next_document_tokens(self) -> np.ndarray:
        started_fresh_epoch = False
        while True:
            if self._docs is None:
                self._open_epoch()
            text = next(self._docs, None)
            if text is not None:
                ids = self.tokenizer.encode(text).ids
                ids.append(self.tokenizer.token_to_id(EOS_TOKEN))
                return np.asarray(ids, dtype=np.int64)
            if started_fresh_epoch:
                raise CorpusError(f"group {self.group!r} ({self.split}) has no documents for rank {self.rank}")
            log.info("group %s: epoch %d done, starting epoch %d", self.group, self.epoch, self.epoch + 1)
            self.epoch, self.docs_consumed, self.token_offset = self.epoch + 1, 0, 0
            self._docs = None
            started_fresh_epoch = True

    def next_sequence(self) -> np.ndarray:
        if self.sequence_shuffle <= 1:
            return self._pack()
        while len(self._held) < self.sequence_shuffle:
            self._held.append(self._pack())
        # The draw is a function of (seed, group, rank, draw count): nothing but the counter to checkpoint.
        salt = int(hashlib.sha256(f"{self.group}/{self.rank}".encode()).hexdigest()[:8], 16)
        i = int(np.random.default_rng([self.seed, salt, self.draws]).integers(len(self._held)))
        self.draws += 1
        self._held[i], self._held[-1] = self._held[-1], self._held[i]
        return self._held.pop()

    def _pack(self) -> np.ndarray:
        out = np.empty(self.seq_len, dtype=np.int64)  # (T,)
        filled = 0
        while filled < self.seq_len:
            if self._tokens is None:
                self._tokens = self._next_document_tokens()
            take = min(self.seq_len - filled, len(self._tokens) - self.token_offset)
            out[filled : filled + take] = self._tokens[self.token_offset : self.token_offset + take]
            filled += take
            self.token_offset += take
            if self.token_offset == len(self._tokens):
                self.docs_consumed += 1
                self.token_offset = 0
                self._tokens = None
        return out

    def state_dict(self) -> dict:
        held = np.stack(self._held) if self._held else np.empty((0, self.seq_len), dtype=np.int64)  # (H, T)
        return {"kind": "stream", "epoch": self.epoch, "docs_consumed": self.docs_consumed,
                "token_offset": self.token_offset, "draws": self.draws, "held": held}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "stream":
            raise CorpusError(f"group {self.group!r}: checkpoint data position is {state.get('kind')!r}, not streaming")
        self.epoch, self.docs_consumed, self.token_offset = state["epoch"], state["docs_consumed"], state["token_offset"]
        self.draws = state.get("draws", 0)
        self._held = [np.array(row) for row in state.get("held", [])]
        self._docs = None
        self._tokens = None


@dataclass
class MemmapGroup:
    """Shuffled non-overlapping `seq_len` windows of one group's pre-tokenized token file."""

    path: Path
    dtype: str
    group: str
    seq_len: int
    seed: int
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    index: int = 0  # position in this rank's slice of the epoch's permutation
    _tokens: np.ndarray | None = field(default=None, repr=False)
    _order: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        if len(self._tokens) // self.seq_len < self.world_size:
            raise CorpusError(
                f"group {self.group!r}: {len(self._tokens)} tokens in {self.path} make fewer than one"
                f" sequence of {self.seq_len} per worker ({self.world_size} workers)"
            )

    def _epoch_order(self) -> np.ndarray:
        windows = len(self._tokens) // self.seq_len
        rng = np.random.default_rng([self.seed, self.epoch, int(hashlib.sha256(self.group.encode()).hexdigest()[:8], 16)])
        return rng.permutation(windows)[self.rank :: self.world_size]

    def next_sequence(self) -> np.ndarray:
        if self._order is None:
            self._order = self._epoch_order()
        if self.index >= len(self._order):
            log.info("group %s: epoch %d done, starting epoch %d", self.group, self.epoch, self.epoch + 1)
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        start = int(self._order[self.index]) * self.seq_len
        self.index += 1
        return np.asarray(self._tokens[start : start + self.seq_len], dtype=np.int64)  # (T,)

    def state_dict(self) -> dict:
        return {"kind": "memmap", "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "memmap":
            raise CorpusError(f"group {self.group!r}: checkpoint data position is {state.get('kind')!r}, not memmap")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = None


class SequenceMixer:
    """Draws each sequence from one group with probability equal to its mix weight.

    The draw for sequence n is a pure function of (seed, n), so the mix needs no RNG state
    in the checkpoint beyond the counter, and every rank draws the same group sequence.
    """

    def __init__(self, groups: dict[str, object], weights: dict[str, float], seed: int):
        self.groups = groups
        self.names = list(groups)
        self.cumulative = np.cumsum([weights[n] for n in self.names])
        self.seed = seed
        self.sequences_drawn = 0
        self.drawn_per_group: Counter = Counter()

    def next_sequence(self) -> np.ndarray:
        u = np.random.default_rng([self.seed, 104729, self.sequences_drawn]).random() * self.cumulative[-1]
        name = self.names[min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.names) - 1)]
        self.sequences_drawn += 1
        self.drawn_per_group[name] += 1
        return self.groups[name].next_sequence()

    def next_batch(self, batch_size: int) -> np.ndarray:
        return np.stack([self.next_sequence() for _ in range(batch_size)])  # (B, T)

    def state_dict(self) -> dict:
        return {
            "sequences_drawn": self.sequences_drawn,
            "drawn_per_group": dict(self.drawn_per_group),
            "groups": {name: g.state_dict() for name, g in self.groups.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["groups"]) != set(self.groups):
            raise CorpusError(f"checkpoint mixes groups {sorted(state['groups'])}, this run mixes {sorted(self.groups)}")
        self.sequences_drawn = state["sequences_drawn"]
        self.drawn_per_group = Counter(state.get("drawn_per_group", {}))
        for name, group_state in state["groups"].items():
            self.groups[name].load_state_dict(group_state)


# --------------------------------------------------------------------------- pre-tokenization


def _token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


def pretokenize(spec: CorpusSpec, tokenizer, output_dir: str | os.PathLike, *, batch_docs: int = 256) -> dict:
    """Write each group's training tokens (documents in file order, EOS after each) to `tokens-<group>.bin`.

    Streams: documents are tokenized a batch at a time and appended, so memory stays flat. Each
    file is written under a temporary name and renamed; `tokens.json` (written last) says which
    corpus and tokenizer the files belong to, so a finished pre-tokenization is reused.
    """
    output_dir = Path(output_dir)
    index_path = output_dir / "tokens.json"
    fingerprint = {"files": list(spec.files), "group_by": spec.group_by, "groups": spec.groups,
                   "heldout_fraction": spec.heldout_fraction, "tokenizer": tokenizer_fingerprint(tokenizer)}
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fingerprint:
            log.info("reusing pre-tokenized corpus in %s", output_dir)
            return index
    dtype = _token_dtype(tokenizer.get_vocab_size())
    eos = tokenizer.token_to_id(EOS_TOKEN)
    groups: dict[str, dict] = {}
    for group in spec.groups:
        path = output_dir / f"tokens-{group}.bin"
        tokens = documents = 0
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            docs = iter_documents(spec, group, split="train", seed=0, epoch=0)
            while batch := list(itertools.islice(docs, batch_docs)):
                for encoding in tokenizer.encode_batch(batch):
                    ids = np.asarray(encoding.ids + [eos], dtype=dtype)
                    out.write(ids.tobytes())
                    tokens += len(ids)
                documents += len(batch)
        groups[group] = {"path": path.name, "tokens": tokens, "documents": documents}
        log.info("pre-tokenized group %s: %d documents, %d tokens -> %s", group, documents, tokens, path)
    index = {"fingerprint": fingerprint, "dtype": dtype, "groups": groups}
    write_json_atomic(index_path, index)
    return index


# --------------------------------------------------------------------------- eval sets


def first_sequences(texts: Iterable[str], tokenizer, seq_len: int, count: int) -> np.ndarray:
    """The first `count` packed sequences of `texts` (in order, EOS-separated): a fixed evaluation set."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    needed = count * seq_len
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer.encode(text).ids)
        buffer.append(eos)
        if len(buffer) >= needed:
            break
    usable = (min(len(buffer), needed) // seq_len) * seq_len
    return np.asarray(buffer[:usable], dtype=np.int64).reshape(-1, seq_len)  # (N, T)
