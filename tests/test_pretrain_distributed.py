"""The loop on 2 torch.distributed (gloo) CPU processes: DDP, and FSDP2 sharding with a resume,
give the same loss sequence. (test_pretrain_ray.py runs the same loop under Ray Train.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.pretrain.train import TrainConfig, prepare, train_loop
from pretrain_corpus import write_selected_corpus


def _config(corpus: Path, output: Path, strategy: str, steps: int) -> TrainConfig:
    return TrainConfig(corpus=str(corpus), output=str(output), steps=steps, micro_batch=2, seq_len=32, log_every=1,
                       eval_every=2, checkpoint_every=2, mix="web=0.8,code=0.2", heldout_fraction=0.1,
                       eval_batches=1, lr=3e-3, num_workers=2, strategy=strategy, cpu_threads=1)


def _worker(rank: int, port: int, runs: list[TrainConfig]) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for config in runs:  # one process group, several runs: imports and start-up paid once
            train_loop(config)
    finally:
        dist.destroy_process_group()


def _losses(output: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], round(r["loss"], 5)) for r in records if r["kind"] == "train"]


def test_ddp_and_fsdp_with_resume_agree(tmp_path, port):
    import torch.multiprocessing as mp

    corpus = write_selected_corpus(tmp_path / "selected")
    runs = [_config(corpus, tmp_path / "ddp", "ddp", 6),
            _config(corpus, tmp_path / "fsdp", "fsdp", 4),
            _config(corpus, tmp_path / "fsdp", "fsdp", 6)]  # same output, more steps: resumes at 4
    for config in runs:
        prepare(config)
    mp.spawn(_worker, args=(port, runs), nprocs=2, join=True)
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert [s for s, _ in fsdp] == list(range(1, 7))
    # Sharded and replicated training do the same arithmetic up to reduction order.
    assert [loss for _, loss in fsdp] == pytest.approx([loss for _, loss in ddp], rel=1e-4)
    assert ddp[-1][1] < ddp[0][1]
    assert (tmp_path / "fsdp" / "model" / "model.safetensors").is_file()
