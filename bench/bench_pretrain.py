"""Pretraining throughput.

CPU mode (default; the baseline this machine can measure):
    tokens/s of the `tiny` preset through the real training loop (`jobs.pretrain.train.train`:
    streaming ingestion and, separately, the memory-mapped pre-tokenized path), against the
    same model's bare forward/backward/AdamW step on random tokens measured in the same run.
    The ratio says how much of the model's own speed the loop (data, logging, checkpoints) keeps.

GPU mode (`--mode gpu`, for an H100/H200/A100; not run here, this machine has no GPU):
    the `phi-1.5` preset at sequence length 2048 with bf16 autocast, SDPA attention and fused
    AdamW (optionally --compile / --activation-checkpointing): finds the largest micro-batch
    that fits by doubling until out-of-memory, then reports tokens/s and MFU (model FLOPs per
    token from the config, 6N + 12*L*d*T, over the device's peak bf16 FLOP/s) at that size.
    Targets from the issue: >= 45% MFU on one H200 (anchors: TinyLlama 56% on A100, nanochat ~46%
    and torchtitan 33-39% on H100).

    python bench/bench_pretrain.py                       # CPU
    python bench/bench_pretrain.py --mode gpu --compile  # one GPU

Writes bench/results/pretrain.json (the CPU figures; GPU mode writes pretrain_gpu.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edufilter.io import write_json_atomic  # noqa: E402
from jobs.pretrain.presets import flops_per_token, parameter_count, resolve_preset  # noqa: E402


def bare_step_tokens_per_s(preset_name: str, micro_batch: int, seq_len: int, steps: int, device: str,
                           compile_model: bool = False, activation_checkpointing: bool = False) -> float:
    """The model's own speed: the training step of train_loop on random tokens, nothing else."""
    import contextlib

    import torch
    from transformers import PhiForCausalLM

    preset = resolve_preset(preset_name)
    torch.manual_seed(0)
    model = PhiForCausalLM(preset.to_phi_config(eos_token_id=0)).to(device)
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.98), eps=1e-7, weight_decay=0.1,
                                  fused=device == "cuda")
    step_model = torch.compile(model) if compile_model else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    x = torch.randint(0, preset.vocab_size, (micro_batch, seq_len), device=device)  # (B, T)

    def step() -> None:
        with autocast:
            loss = step_model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, autotuning, compilation
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * micro_batch * seq_len / (time.perf_counter() - start)


def loop_tokens_per_s(output: Path) -> float:
    """Steady-state tokens/s the loop logged (its first logging window, with start-up, left out)."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r["kind"] == "train"][1:]
    return sum(rates) / len(rates)


def cpu_mode(args) -> dict:
    import torch

    from jobs.pretrain.train import TrainConfig, train

    torch.set_num_threads(args.cpu_threads)
    corpus = Path(args.corpus)
    preset = resolve_preset("tiny")
    seq_len, micro_batch = preset.max_position_embeddings, args.micro_batch
    bare = bare_step_tokens_per_s("tiny", micro_batch, seq_len, args.steps, "cpu")
    results = {"bare_model_step_tokens_per_s": bare}
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    for name, pretokenize in (("streaming", False), ("memmap", True)):
        out = work / name
        config = TrainConfig(corpus=str(corpus), output=str(out), preset="tiny", steps=args.steps,
                             micro_batch=micro_batch, log_every=max(1, args.steps // 10), eval_every=10**9,
                             checkpoint_every=10**9, heldout_fraction=0.0, pretokenize=pretokenize,
                             cpu_threads=args.cpu_threads, tokenizer=str(work / "streaming" / "tokenizer")
                             if name == "memmap" else None)
        started = time.perf_counter()
        train(config)
        results[f"loop_{name}_tokens_per_s"] = loop_tokens_per_s(out)
        results[f"loop_{name}_wall_s"] = time.perf_counter() - started
    results["ratio_loop_streaming_over_bare"] = results["loop_streaming_tokens_per_s"] / bare
    results["ratio_loop_memmap_over_bare"] = results["loop_memmap_tokens_per_s"] / bare
    results.update({
        "mode": "cpu", "preset": "tiny", "parameters": parameter_count(preset)["total"], "seq_len": seq_len,
        "micro_batch": micro_batch, "steps": args.steps, "torch_threads": args.cpu_threads, "corpus": str(corpus),
        "flops_per_token": flops_per_token(preset, seq_len), "mfu": "n/a (no peak FLOP/s for a CPU)",
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs (load average {os.getloadavg()[0]:.1f})",
    })
    return results


def gpu_mode(args) -> dict:
    import torch

    from jobs.pretrain.train import detect_peak_flops

    preset = resolve_preset("phi-1.5")
    seq_len = preset.max_position_embeddings
    device = torch.device("cuda")
    peak = args.peak_flops or detect_peak_flops(device)
    largest, micro_batch = None, 1
    while micro_batch <= args.max_micro_batch:  # double until out of memory
        try:
            bare_step_tokens_per_s("phi-1.5", micro_batch, seq_len, 1, "cuda", False, args.activation_checkpointing)
            largest = micro_batch
            micro_batch *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    measured = args.micro_batch or largest
    tokens_per_s = bare_step_tokens_per_s("phi-1.5", measured, seq_len, args.steps, "cuda", args.compile,
                                          args.activation_checkpointing)
    flops = flops_per_token(preset, seq_len)
    return {
        "mode": "gpu", "device": torch.cuda.get_device_name(device), "preset": "phi-1.5",
        "parameters": parameter_count(preset)["total"], "seq_len": seq_len, "largest_micro_batch": largest,
        "micro_batch": measured, "compile": args.compile, "activation_checkpointing": args.activation_checkpointing,
        "tokens_per_s": tokens_per_s, "flops_per_token": flops, "peak_flops": peak,
        "mfu": flops * tokens_per_s / peak if peak else None, "target_mfu": 0.45,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/bench_pretrain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu", help="cpu: tiny preset; gpu: phi-1.5 on one GPU")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "labelled" / "edufilter_seed" / "web.jsonl"),
                        help="CPU mode: JSONL/parquet of text to train on (default: the shared seed web documents)")
    parser.add_argument("--steps", type=int, default=200, help="measured steps (default 200)")
    parser.add_argument("--micro-batch", type=int, help="micro-batch (CPU default 8; GPU default: the largest that fits)")
    parser.add_argument("--max-micro-batch", type=int, default=64, help="GPU: stop the doubling search here")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CPU: torch threads (default 1)")
    parser.add_argument("--compile", action="store_true", help="GPU: torch.compile the model")
    parser.add_argument("--activation-checkpointing", action="store_true", help="GPU: recompute activations")
    parser.add_argument("--peak-flops", type=float, help="GPU: peak bf16 FLOP/s of the device (default: detected)")
    parser.add_argument("--output", help="result file (default bench/results/pretrain.json, or pretrain_gpu.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "cpu":
        args.micro_batch = args.micro_batch or 8
        results = cpu_mode(args)
        print(f"tiny preset on CPU: bare step {results['bare_model_step_tokens_per_s']:,.0f} tokens/s;"
              f" training loop streaming {results['loop_streaming_tokens_per_s']:,.0f} tokens/s"
              f" (ratio {results['ratio_loop_streaming_over_bare']:.2f}),"
              f" memmap {results['loop_memmap_tokens_per_s']:,.0f} tokens/s"
              f" (ratio {results['ratio_loop_memmap_over_bare']:.2f})")
    else:
        results = gpu_mode(args)
        mfu = f"{100 * results['mfu']:.1f}%" if results["mfu"] else "n/a"
        print(f"phi-1.5 on {results['device']}: micro-batch {results['micro_batch']} (largest {results['largest_micro_batch']}),"
              f" {results['tokens_per_s']:,.0f} tokens/s, MFU {mfu} (target 45%)")
    default = "pretrain.json" if args.mode == "cpu" else "pretrain_gpu.json"
    write_json_atomic(args.output or REPO / "bench" / "results" / default, results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
