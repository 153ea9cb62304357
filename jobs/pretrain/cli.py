"""`edufilter pretrain`: train a Phi-architecture model on a selected corpus.

Rerunning the same command with the same --output resumes from its last
checkpoint; a larger --steps (or --tokens) continues training."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.pretrain.data import CorpusError, TokenizerError
from jobs.pretrain.presets import PRESETS, PresetError, parse_overrides
from jobs.pretrain.train import PretrainError, TrainConfig

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter pretrain",
        description="Pretrain a Phi-architecture model (transformers PhiForCausalLM) on a corpus from `edufilter select`"
        " or any parquet/JSONL of `text`. Rerun with the same --output to resume.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--corpus", required=True, help="corpus folder (or file): parquet/JSONL(.gz) with a `text` column")
    data.add_argument("--tokenizer", help="local tokenizer folder (tokenizer.json, or vocab.json + merges.txt);"
                      " default: train a byte-level BPE of the preset's vocab_size on the corpus, saved in OUTPUT/tokenizer")
    data.add_argument("--mix", help="sample groups by weight, e.g. web=0.8,code=0.2 (phi-1.5-web); default: natural proportions")
    data.add_argument("--mix-by", default="domain", help="column whose values --mix names (default: domain)")
    data.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's context length)")
    data.add_argument("--heldout-fraction", type=float, default=0.01,
                      help="fraction of documents (by text hash) held out of training for the held-out loss (default 0.01)")
    data.add_argument("--eval-corpus", action="append", default=[], metavar="NAME=PATH",
                      help="also report loss on this corpus at each evaluation (repeatable)")
    data.add_argument("--shuffle-buffer", type=int, default=1000,
                      help="documents held in the streaming shuffle buffer (0: file order; default 1000)")
    data.add_argument("--sequence-shuffle", type=int, default=64,
                      help="packed sequences held and drawn at random, so a micro-batch mixes documents"
                      " (streaming mode; 0: off; default 64)")
    data.add_argument("--tokenizer-train-docs", type=int, default=50_000,
                      help="documents read to train the tokenizer when none is given (default 50000)")
    data.add_argument("--pretokenize", action="store_true",
                      help="tokenize the corpus once into OUTPUT/tokens/*.bin and train from the memory-mapped tokens")

    model = p.add_argument_group("model")
    model.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default tiny)")
    model.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a preset field, e.g. --set num_hidden_layers=6 (repeatable; range-checked)")

    run = p.add_argument_group("training")
    run.add_argument("--output", required=True, help="output folder: checkpoints, metrics.jsonl, tokenizer, final model")
    budget = run.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimiser steps to train in total (a larger value continues a run)")
    budget.add_argument("--tokens", type=int, help="tokens to train on in total (converted to whole steps)")
    run.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order (default 0)")
    run.add_argument("--micro-batch", type=int, default=8, help="sequences per forward pass per worker (default 8)")
    run.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    run.add_argument("--lr", type=float, default=2e-4, help="peak learning rate, constant after warm-up (phi-1.5: 2e-4)")
    run.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (phi-1.5 used none; default 0)")
    run.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    run.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 (default 0.9)")
    run.add_argument("--beta2", type=float, default=0.98, help="AdamW beta2 (default 0.98)")
    run.add_argument("--eps", type=float, default=1e-7, help="AdamW epsilon (default 1e-7)")
    run.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: off; default 1.0)")
    run.add_argument("--log-every", type=int, default=10, help="steps between log lines (default 10)")
    run.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations (default 100)")
    run.add_argument("--eval-batches", type=int, default=8, help="micro-batches per evaluation set (default 8)")
    run.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept on disk (default 2)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--activation-checkpointing", action="store_true",
                     help="recompute activations in backward to fit larger micro-batches")
    run.add_argument("--cpu-threads", type=int, help="torch threads on CPU (default: torch's choice, one per core)")
    run.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device for MFU (default: detected on"
                     " H100/H200/A100; n/a on CPU)")

    scale = p.add_argument_group("scale-out (Ray Train)")
    scale.add_argument("--num-workers", type=int, default=1, help="train data-parallel on this many Ray Train workers")
    scale.add_argument("--use-gpu", action="store_true", help="one GPU per worker (bf16 autocast, NCCL)")
    scale.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"],
                       help="ddp replicates the model; fsdp shards it for models that do not fit one device")
    scale.add_argument("--ray-address", help="Ray cluster address (default: start or join a local Ray)")
    return p


def _parse_eval_corpora(items: list[str]) -> dict[str, str]:
    corpora: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PretrainError(f"--eval-corpus expects NAME=PATH, got {item!r}")
        corpora[name] = path
    return corpora


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        corpus=args.corpus, output=args.output, preset=args.preset, overrides=parse_overrides(args.overrides),
        steps=args.steps, tokens=args.tokens, seed=args.seed, tokenizer=args.tokenizer, mix=args.mix,
        mix_by=args.mix_by, seq_len=args.seq_len, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
        lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, beta1=args.beta1,
        beta2=args.beta2, eps=args.eps, grad_clip=args.grad_clip, eval_every=args.eval_every,
        eval_batches=args.eval_batches, heldout_fraction=args.heldout_fraction,
        eval_corpora=_parse_eval_corpora(args.eval_corpus), log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        shuffle_buffer=args.shuffle_buffer, sequence_shuffle=args.sequence_shuffle, tokenizer_train_docs=args.tokenizer_train_docs,
        pretokenize=args.pretokenize, compile=args.compile, activation_checkpointing=args.activation_checkpointing,
        peak_flops=args.peak_flops, cpu_threads=args.cpu_threads, num_workers=args.num_workers, use_gpu=args.use_gpu, strategy=args.strategy,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        log.info("pretrain config: %s", json.dumps(config.to_dict(), sort_keys=True))
        if config.num_workers > 1 or args.ray_address:
            from jobs.pretrain.ray_train import train_on_ray

            summary = train_on_ray(config, address=args.ray_address)
        else:
            from jobs.pretrain.train import train

            summary = train(config)
    except (PretrainError, PresetError, CorpusError, TokenizerError) as exc:
        print(f"edufilter pretrain: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0
