"""The same training loop under Ray Train's TorchTrainer: 2 CPU workers, DDP over gloo, on a real local Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from jobs.pretrain.ray_train import train_on_ray
from jobs.pretrain.train import TrainConfig
from pretrain_corpus import write_selected_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.ray
def test_two_cpu_workers_train_with_ddp(ray_local, tmp_path):
    corpus = write_selected_corpus(tmp_path / "selected")
    out = tmp_path / "out"

    def config(steps: int) -> TrainConfig:
        return TrainConfig(corpus=str(corpus), output=str(out), steps=steps, micro_batch=2, seq_len=32,
                           log_every=1, eval_every=2, checkpoint_every=2, mix="web=0.8,code=0.2",
                           heldout_fraction=0.1, eval_batches=2, lr=3e-3, num_workers=2)

    summary = train_on_ray(config(4))
    assert summary["step"] == 4 and summary["loss"] > 0
    # Each step consumed 2 workers x 2 sequences x 32 tokens.
    assert summary["tokens"] == 4 * 2 * 2 * 32

    state = torch.load(out / "checkpoints" / "step_00000004" / "state.pt", weights_only=False)
    assert len(state["data"]) == len(state["rng"]) == 2  # one data position and RNG state per rank
    assert state["data"][0]["sequences_drawn"] == state["data"][1]["sequences_drawn"] == 8
    assert state["step"] == 4 and state["config"]["num_workers"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    assert (Path(out) / "model" / "config.json").is_file()
