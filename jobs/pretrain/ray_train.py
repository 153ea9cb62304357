"""The same training loop, data-parallel on Ray Train (TorchTrainer).

The driver runs `prepare` once (checks, tokenizer training, optional
pre-tokenization) so errors surface before any worker starts and the tokenizer
is trained once, not per worker. Each worker then runs `train_loop` unchanged:
Ray Train has already initialised torch.distributed (gloo on CPU, NCCL on GPU),
and the loop wraps the model in DDP, or shards it with FSDP2 for models that do
not fit one device (`--strategy fsdp`).

Checkpoints are the loop's own (OUTPUT/checkpoints, written by rank 0), so a
rerun resumes the same way with or without Ray; OUTPUT must therefore be on a
filesystem every worker node sees (a shared volume on Kubernetes). Metrics are
also reported to Ray Train at every logging step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from jobs.pretrain.train import TrainConfig, prepare, train_loop

log = logging.getLogger(__name__)


def _worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(loop_config["config"])
    device = ray.train.torch.get_device() if config.use_gpu else "cpu"
    train_loop(config, device=device, report=ray.train.report)


def train_on_ray(config: TrainConfig, *, address: str | None = None) -> dict[str, Any]:
    """Run `config` on `config.num_workers` Ray Train workers; returns the last metrics rank 0 reported."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers run in their own folders: ship absolute paths.
    config = dataclasses.replace(
        config,
        corpus=os.path.abspath(config.corpus),
        output=os.path.abspath(config.output),
        tokenizer=os.path.abspath(config.tokenizer) if config.tokenizer else None,
        eval_corpora={name: os.path.abspath(path) for name, path in config.eval_corpora.items()},
    )
    prepare(config)
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        started_ray = True
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"config": config.to_dict()},
            torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
            run_config=RunConfig(
                name="pretrain",
                storage_path=str((Path(config.output) / "ray").resolve()),
                # A failure ends the run with its error; rerunning the command resumes from
                # OUTPUT/checkpoints, so a blind in-process retry would only hide the cause.
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if result.error is not None:
        raise result.error
    # Rank 0's summary of the run (the loop writes it last); Ray's result holds metrics only
    # for checkpoints reported to Ray, and this job keeps its checkpoints itself.
    summary = json.loads((Path(config.output) / "summary.json").read_text())
    log.info("ray train finished: %s", summary)
    return summary
