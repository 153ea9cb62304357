"""Pretraining job: presets, ingestion, the training loop on CPU, exact resume, bad input.

A real tiny PhiForCausalLM trains on a corpus in the layout `edufilter select` writes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jobs.pretrain import data as D
from jobs.pretrain.cli import main as pretrain_main
from jobs.pretrain.presets import PRESETS, PresetError, flops_per_token, parameter_count, resolve_preset
from jobs.pretrain.train import TrainConfig, train
from pretrain_corpus import write_selected_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small enough that a step takes milliseconds; lr high enough that 8 steps visibly lower the loss.
FAST = dict(micro_batch=4, log_every=1, eval_every=4, checkpoint_every=3, heldout_fraction=0.1,
            mix="web=0.8,code=0.2", lr=3e-3, eval_batches=2, cpu_threads=1)


def metric_losses(output: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_selected_corpus(tmp_path_factory.mktemp("selected"))


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    """One 8-step run, the reference the resumed runs must reproduce exactly."""
    out = tmp_path_factory.mktemp("run") / "out"
    train(TrainConfig(corpus=str(corpus), output=str(out), steps=8, **FAST))
    return out


# --------------------------------------------------------------------------- presets


def test_phi_15_preset_matches_the_paper_and_the_real_model():
    import torch
    from transformers import PhiForCausalLM

    preset = PRESETS["phi-1.5"]
    assert (preset.num_hidden_layers, preset.num_attention_heads, preset.head_dim, preset.rotary_dim) == (24, 32, 64, 32)
    assert preset.max_position_embeddings == 2048 and preset.vocab_size == 51200
    with torch.device("meta"):  # shapes only: no 5.6 GB allocation
        model = PhiForCausalLM(preset.to_phi_config(eos_token_id=0))
    real = sum(p.numel() for p in model.parameters())
    assert real == parameter_count(preset)["total"]
    assert 1.35e9 < real < 1.45e9
    assert model.config._attn_implementation == "sdpa"
    # 6N (N without the embedding lookup) + 12*L*d*T attention
    assert flops_per_token(preset, 2048) == 6 * parameter_count(preset)["non_embedding"] + 12 * 24 * 2048 * 2048


@pytest.mark.parametrize("override, message", [
    ({"num_hidden_layers": "0"}, "out of range"),
    ({"hidden_size": "66"}, "not divisible"),
    ({"resid_pdrop": "1.5"}, "out of range"),
    ({"hidden_size": "abc"}, "must be int"),
    ({"no_such_field": "1"}, "unknown model field"),
])
def test_out_of_range_overrides_are_refused(override, message):
    with pytest.raises(PresetError, match=message):
        resolve_preset("tiny", override)


def test_overrides_apply():
    preset = resolve_preset("tiny", {"num_hidden_layers": "3", "partial_rotary_factor": "1.0"})
    assert preset.num_hidden_layers == 3 and preset.rotary_dim == preset.head_dim


# --------------------------------------------------------------------------- ingestion


def test_documents_shuffle_deterministically_and_ranks_are_disjoint(corpus):
    spec = D.CorpusSpec(files=tuple(map(str, D.find_corpus_files(corpus))), mix=D.parse_mix("web=0.8,code=0.2"))
    first = list(D.iter_documents(spec, "web", split="train", seed=1, epoch=0, shuffle_buffer=16))
    assert first == list(D.iter_documents(spec, "web", split="train", seed=1, epoch=0, shuffle_buffer=16))
    assert first != list(D.iter_documents(spec, "web", split="train", seed=1, epoch=1, shuffle_buffer=16))
    assert sorted(first) == sorted(D.iter_documents(spec, "web", split="train", seed=1, epoch=0))  # a permutation
    ranks = [list(D.iter_documents(spec, "web", split="train", seed=1, epoch=0, rank=r, world_size=2, shuffle_buffer=16))
             for r in range(2)]
    assert Counter(ranks[0] + ranks[1]) == Counter(first)


def test_heldout_documents_never_reach_training(corpus):
    spec = D.CorpusSpec(files=tuple(map(str, D.find_corpus_files(corpus))), heldout_fraction=0.2)
    train_docs = set(D.iter_documents(spec, D.ALL_GROUP, split="train", seed=0, epoch=0))
    heldout_docs = set(D.iter_documents(spec, D.ALL_GROUP, split="heldout", seed=0, epoch=0))
    assert heldout_docs and train_docs and not (train_docs & heldout_docs)


def test_packing_puts_eos_between_documents_and_mix_follows_weights(corpus, uninterrupted):
    tokenizer = D.load_tokenizer(uninterrupted / "tokenizer")
    eos = tokenizer.token_to_id(D.EOS_TOKEN)
    spec = D.CorpusSpec(files=tuple(map(str, D.find_corpus_files(corpus))), mix=D.parse_mix("web=0.8,code=0.2"))
    groups = {g: D.StreamingGroup(spec=spec, group=g, tokenizer=tokenizer, seq_len=64, seed=0, shuffle_buffer=0)
              for g in spec.groups}
    stream = np.concatenate([groups["web"].next_sequence() for _ in range(20)])
    docs = list(D.iter_documents(spec, "web", split="train", seed=0, epoch=0))
    expected = np.concatenate([tokenizer.encode(docs[0]).ids + [eos], tokenizer.encode(docs[1]).ids + [eos]])
    assert np.array_equal(stream[: len(expected)], expected)
    mixer = D.SequenceMixer({g: _Counting() for g in spec.groups}, dict(spec.mix), seed=0)
    for _ in range(2000):
        mixer.next_sequence()
    assert abs(mixer.drawn_per_group["web"] / 2000 - 0.8) < 0.03


class _Counting:
    def next_sequence(self):
        return np.zeros(1)


def test_memmap_pretokenize_matches_streaming_tokens(corpus, uninterrupted, tmp_path):
    tokenizer = D.load_tokenizer(uninterrupted / "tokenizer")
    spec = D.CorpusSpec(files=tuple(map(str, D.find_corpus_files(corpus))), mix=D.parse_mix("web=1,code=1"))
    index = D.pretokenize(spec, tokenizer, tmp_path)
    tokens = np.memmap(tmp_path / index["groups"]["code"]["path"], dtype=index["dtype"], mode="r")
    docs = list(D.iter_documents(spec, "code", split="train", seed=0, epoch=0))
    eos = tokenizer.token_to_id(D.EOS_TOKEN)
    assert len(tokens) == sum(len(tokenizer.encode(d).ids) + 1 for d in docs)
    assert tokens[len(tokenizer.encode(docs[0]).ids)] == eos
    assert D.pretokenize(spec, tokenizer, tmp_path) == index  # reused, not rewritten


# --------------------------------------------------------------------------- training


def test_trains_logs_and_saves_a_loadable_model(uninterrupted):
    from transformers import PhiForCausalLM

    losses = metric_losses(uninterrupted)
    assert [s for s, _ in losses] == list(range(1, 9))
    assert losses[-1][1] < losses[0][1]
    evals = [json.loads(l) for l in (uninterrupted / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [4, 8] and np.isfinite(evals[-1]["eval_loss"]["heldout"])
    assert (uninterrupted / "tokenizer" / "tokenizer.json").is_file()
    assert (uninterrupted / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    assert sorted(p.name for p in (uninterrupted / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    model = PhiForCausalLM.from_pretrained(uninterrupted / "model")
    assert model.config.num_hidden_layers == PRESETS["tiny"].num_hidden_layers


def test_stop_then_continue_gives_the_identical_loss_sequence(corpus, uninterrupted, tmp_path):
    out = tmp_path / "out"
    train(TrainConfig(corpus=str(corpus), output=str(out), steps=5, **FAST))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    train(TrainConfig(corpus=str(corpus), output=str(out), steps=8, **FAST))  # a larger --steps continues
    assert metric_losses(out) == metric_losses(uninterrupted)


def test_killed_run_resumes_to_the_identical_loss_sequence(corpus, tmp_path, caplog):
    """SIGKILL a real `edufilter pretrain` process after a checkpoint, rerun the same command."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edufilter", "pretrain", "--corpus", str(corpus), "--output", str(out),
               "--steps", "16", "--micro-batch", "2", "--seq-len", "32", "--log-every", "1", "--eval-every", "100",
               "--checkpoint-every", "2", "--mix", "web=0.8,code=0.2", "--lr", "3e-3", "--cpu-threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file() and pointer.read_text().strip() >= "step_00000004":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = metric_losses(out)[-1][0]
    assert killed_at < 16
    # The same command again (in this process, to save an interpreter start): resumes.
    with caplog.at_level(logging.INFO, logger="jobs.pretrain.train"):
        assert pretrain_main(command[4:]) == 0
    assert "resuming from" in caplog.text
    reference = tmp_path / "reference"
    train(TrainConfig(corpus=str(corpus), output=str(reference), steps=16, micro_batch=2, seq_len=32, log_every=1,
                      eval_every=100, checkpoint_every=2, mix="web=0.8,code=0.2", lr=3e-3, cpu_threads=1))
    assert metric_losses(out) == metric_losses(reference)
    assert len(metric_losses(out)) == 16


def test_cli_prints_one_plain_line_per_logging_step(corpus, tmp_path, capsys):
    status = pretrain_main(["--corpus", str(corpus), "--output", str(tmp_path / "o"), "--steps", "4",
                            "--micro-batch", "2", "--log-every", "2", "--pretokenize", "--seq-len", "32", "--cpu-threads", "1"])
    assert status == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ") and " loss=" in l]
    assert len(lines) == 2
    assert lines[0].startswith("step 2 loss=") and "tokens/s=" in lines[0] and lines[0].endswith("mfu=n/a")
    assert (tmp_path / "o" / "tokens" / "tokens.json").is_file()


# --------------------------------------------------------------------------- bad input


def _write_texts(folder: Path, texts: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "domain": ["web"] * len(texts)}),
                   folder / "part-00000.parquet")
    return folder


def _run_expecting_error(capsys, argv: list[str], message: str, output: Path) -> None:
    assert pretrain_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (output / "checkpoints").exists()  # refused before any training


def test_empty_corpus_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o"
    _run_expecting_error(capsys, ["--corpus", str(empty), "--output", str(out), "--steps", "1"], "holds no parquet", out)
    _write_texts(empty, [])
    _run_expecting_error(capsys, ["--corpus", str(empty), "--output", str(out), "--steps", "1"],
                         "has no documents", out)


def test_corpus_shorter_than_one_sequence_is_refused(tmp_path, capsys):
    short = _write_texts(tmp_path / "short", ["just a few words"])
    out = tmp_path / "o"
    _run_expecting_error(capsys, ["--corpus", str(short), "--output", str(out), "--steps", "1", "--heldout-fraction", "0"],
                         "shorter than one sequence of 64", out)


def test_tokenizer_dir_missing_files_is_refused(corpus, tmp_path, capsys):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text("{}")
    out = tmp_path / "o"
    _run_expecting_error(capsys, ["--corpus", str(corpus), "--output", str(out), "--steps", "1", "--tokenizer", str(tok)],
                         "has neither tokenizer.json nor vocab.json + merges.txt", out)


def test_checkpoint_from_another_preset_is_refused(corpus, uninterrupted, tmp_path, capsys):
    import shutil

    out = tmp_path / "o"
    shutil.copytree(uninterrupted, out)
    assert pretrain_main(["--corpus", str(corpus), "--output", str(out), "--steps", "9", "--micro-batch", "4",
                          "--set", "num_hidden_layers=3", "--mix", "web=0.8,code=0.2"]) == 2
    err = capsys.readouterr().err
    assert "preset.num_hidden_layers: 2 -> 3" in err
    assert not (out / "checkpoints" / "step_00000009").exists()


@pytest.mark.parametrize("argv, message", [
    (["--set", "num_attention_heads=0"], "num_attention_heads=0 is out of range"),
    (["--seq-len", "4096"], "must be between 2 and the preset's context length"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1"),
    (["--mix", "web=0.8,math=0.2"], "--mix names math"),
    (["--mix", "web=-1"], "--mix expects name=positive_weight"),
])
def test_bad_settings_are_refused(corpus, tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    _run_expecting_error(capsys, ["--corpus", str(corpus), "--output", str(out), "--steps", "1", *argv], message, out)


def test_token_budget_becomes_whole_steps():
    config = TrainConfig(corpus="c", output="o", tokens=10_000, micro_batch=4, grad_accum=2, seq_len=32, num_workers=2)
    assert config.tokens_per_step == 4 * 2 * 32 * 2
    assert config.total_steps == 20  # ceil(10000 / 512)


def test_sequence_shuffle_mixes_windows_and_resumes_from_its_state(corpus, uninterrupted):
    tokenizer = D.load_tokenizer(uninterrupted / "tokenizer")
    spec = D.CorpusSpec(files=tuple(map(str, D.find_corpus_files(corpus))), mix=D.parse_mix("web=1"))

    def group(shuffle: int) -> D.StreamingGroup:
        return D.StreamingGroup(spec=spec, group="web", tokenizer=tokenizer, seq_len=64, seed=0,
                                shuffle_buffer=0, sequence_shuffle=shuffle)

    unshuffled = group(0)
    plain = [unshuffled.next_sequence() for _ in range(10)]
    shuffled, reference = group(8), group(8)
    first = [shuffled.next_sequence() for _ in range(10)]
    state = shuffled.state_dict()
    resumed = group(8)
    resumed.load_state_dict(state)
    expected = [reference.next_sequence() for _ in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(first + [resumed.next_sequence() for _ in range(10)], expected))
    assert not all(np.array_equal(a, b) for a, b in zip(first, plain))  # drawn out of document order
