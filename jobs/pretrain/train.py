"""Pretrain a Phi-architecture model (transformers' PhiForCausalLM) on a selected corpus.

`prepare(config)` checks everything that can be wrong before a step runs (corpus,
tokenizer, preset, an existing checkpoint) and trains the tokenizer when none is
given. `train_loop(config)` is the one straight training loop; it runs as a
single process or, unchanged, inside each Ray Train worker (ray_train.py), where
torch.distributed is already initialised and the model is wrapped in DDP/FSDP.

Output folder layout:
    run.json                 the resolved run (preset fields, data, optimiser); a rerun must match it
    tokenizer/tokenizer.json the tokenizer the run uses (trained here when none was given)
    metrics.jsonl            one JSON line per logging step and per evaluation
    checkpoints/step_N/      state.pt (model, optimiser, scheduler, data position, RNG) + config.json
    checkpoints/latest       name of the newest complete checkpoint
    model/                   final weights + config (save_pretrained) + tokenizer, loadable by transformers
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edufilter.io import atomic_path, write_json_atomic, write_text_atomic
from jobs.pretrain import data as D
from jobs.pretrain.presets import ModelPreset, PresetError, flops_per_token, parameter_count, resolve_preset

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity): the MFU denominator.
PEAK_FLOPS_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


class PretrainError(ValueError):
    """A run that cannot start: bad settings, or an output folder that belongs to another run."""


@dataclass(frozen=True)
class TrainConfig:
    corpus: str
    output: str
    preset: str = "tiny"
    overrides: dict[str, str] = field(default_factory=dict)  # --set field=value, range-checked by the preset
    steps: int | None = None
    tokens: int | None = None
    seed: int = 0
    tokenizer: str | None = None
    mix: str | None = None
    mix_by: str = "domain"
    seq_len: int | None = None  # default: the preset's context length
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-7
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    heldout_fraction: float = 0.01
    eval_corpora: dict[str, str] = field(default_factory=dict)  # name -> corpus path, evaluated besides held-out
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    shuffle_buffer: int = 1000
    sequence_shuffle: int = 64  # packed sequences held and drawn at random (streaming mode)
    tokenizer_train_docs: int = 50_000
    pretokenize: bool = False
    compile: bool = False
    activation_checkpointing: bool = False
    peak_flops: float | None = None
    num_workers: int = 1
    use_gpu: bool = False
    strategy: str = "ddp"  # ddp | fsdp (Ray Train only)
    cpu_threads: int | None = None  # torch intra-op threads on CPU (default: torch's choice)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return cls(**values)

    @property
    def model_preset(self) -> ModelPreset:
        return resolve_preset(self.preset, self.overrides)

    @property
    def sequence_length(self) -> int:
        return self.seq_len or self.model_preset.max_position_embeddings

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.sequence_length * self.num_workers

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.tokens / self.tokens_per_step)

    def corpus_spec(self, files: list[Path] | None = None) -> D.CorpusSpec:
        files = files if files is not None else D.find_corpus_files(self.corpus)
        return D.CorpusSpec(
            files=tuple(str(p) for p in files),
            group_by=self.mix_by,
            mix=D.parse_mix(self.mix),
            heldout_fraction=self.heldout_fraction,
        )


def check_settings(config: TrainConfig) -> ModelPreset:
    """Range checks on everything that is not data: fail before reading a byte of corpus."""
    try:
        preset = config.model_preset
    except PresetError as exc:
        raise PretrainError(str(exc)) from None
    if (config.steps is None) == (config.tokens is None):
        raise PretrainError("give exactly one of --steps or --tokens")
    positive = {"micro_batch": config.micro_batch, "grad_accum": config.grad_accum, "eval_every": config.eval_every,
                "eval_batches": config.eval_batches, "log_every": config.log_every,
                "checkpoint_every": config.checkpoint_every, "keep_checkpoints": config.keep_checkpoints,
                "num_workers": config.num_workers, "cpu_threads": config.cpu_threads or 1}
    if config.steps is not None:
        positive["steps"] = config.steps
    if config.tokens is not None:
        positive["tokens"] = config.tokens
    for name, value in positive.items():
        if value < 1:
            raise PretrainError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 2 <= config.sequence_length <= preset.max_position_embeddings:
        raise PretrainError(
            f"--seq-len {config.sequence_length} must be between 2 and the preset's context length"
            f" max_position_embeddings={preset.max_position_embeddings}"
        )
    if not 0 < config.lr < 1:
        raise PretrainError(f"--lr must be in (0, 1), got {config.lr}")
    if min(config.warmup_steps, config.shuffle_buffer, config.sequence_shuffle, config.grad_clip, config.weight_decay) < 0:
        raise PretrainError("--warmup-steps, --shuffle-buffer, --sequence-shuffle, --grad-clip and --weight-decay must be >= 0")
    if not (0 <= config.beta1 < 1 and 0 <= config.beta2 < 1 and config.eps > 0):
        raise PretrainError("Adam betas must be in [0, 1) and eps > 0")
    if not 0 <= config.heldout_fraction < 1:
        raise PretrainError(f"--heldout-fraction must be in [0, 1), got {config.heldout_fraction}")
    if config.strategy not in ("ddp", "fsdp"):
        raise PretrainError(f"--strategy must be ddp or fsdp, got {config.strategy!r}")
    if config.peak_flops is not None and config.peak_flops <= 0:
        raise PretrainError("--peak-flops must be > 0")
    return preset


def run_identity(config: TrainConfig, preset: ModelPreset, tokenizer_fp: str) -> dict[str, Any]:
    """What must not change between a run and its resumption (steps/tokens may grow; logging may change)."""
    return {
        "preset": preset.to_dict(),
        "tokenizer": tokenizer_fp,
        "seed": config.seed,
        "seq_len": config.sequence_length,
        "micro_batch": config.micro_batch,
        "grad_accum": config.grad_accum,
        "num_workers": config.num_workers,
        "mix": config.mix,
        "mix_by": config.mix_by,
        "heldout_fraction": config.heldout_fraction,
        "pretokenize": config.pretokenize,
        "sequence_shuffle": config.sequence_shuffle,
        "optimizer": {"lr": config.lr, "warmup_steps": config.warmup_steps, "weight_decay": config.weight_decay,
                      "betas": [config.beta1, config.beta2], "eps": config.eps},
    }


def _describe_difference(saved: dict, current: dict) -> str:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            if isinstance(saved.get(key), dict) and isinstance(current.get(key), dict):
                inner = [f"{key}.{k}: {saved[key].get(k)!r} -> {current[key].get(k)!r}"
                         for k in sorted(set(saved[key]) | set(current[key])) if saved[key].get(k) != current[key].get(k)]
                diffs.extend(inner)
            else:
                diffs.append(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}")
    return "; ".join(diffs)


def prepare(config: TrainConfig) -> dict[str, Any]:
    """Check the run and make its tokenizer; raise PretrainError/CorpusError/TokenizerError before training.

    Returns the run identity (also written to OUTPUT/run.json).
    """
    preset = check_settings(config)
    output = Path(config.output)
    spec = config.corpus_spec()
    survey = D.survey_corpus(spec)
    train_docs = {g: n for (g, split), n in survey["docs"].items() if split == "train"}
    if not train_docs:
        raise D.CorpusError(f"corpus {config.corpus} has no documents with text")
    mix_groups = dict(spec.mix)
    if mix_groups:
        missing = [g for g in mix_groups if train_docs.get(g, 0) == 0]
        if missing:
            raise D.CorpusError(
                f"--mix names {', '.join(missing)} but the corpus has no training documents with {config.mix_by}"
                f" = {', '.join(missing)} (it has: {', '.join(f'{g} ({n})' for g, n in sorted(train_docs.items()))})"
            )
        left_out = sorted(set(train_docs) - set(mix_groups))
        if left_out:
            log.warning("--mix leaves out %s=%s present in the corpus", config.mix_by, ", ".join(left_out))
    for (group, split), n in sorted(survey["docs"].items()):
        log.info("corpus %s=%s %s: %d documents, %d characters", config.mix_by, group, split, n,
                 survey["chars"][(group, split)])

    # The tokenizer: given, or the one this output folder already trained, or trained now.
    tokenizer_dir = output / "tokenizer"
    if config.tokenizer:
        tokenizer = D.load_tokenizer(config.tokenizer)
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(tokenizer_dir / D.TOKENIZER_FILE) as tmp:
            tokenizer.save(str(tmp))
    elif (tokenizer_dir / D.TOKENIZER_FILE).is_file():
        tokenizer = D.load_tokenizer(tokenizer_dir)
    else:
        log.info("training a byte-level BPE tokenizer (vocab %d) on up to %d documents",
                 preset.vocab_size, config.tokenizer_train_docs)
        texts = (t for _, t in _limited_rows(spec, config.tokenizer_train_docs))
        tokenizer = D.train_tokenizer(texts, preset.vocab_size, tokenizer_dir)
        log.info("tokenizer saved to %s (%d entries)", tokenizer_dir, tokenizer.get_vocab_size())
    if tokenizer.get_vocab_size() > preset.vocab_size:
        raise D.TokenizerError(
            f"tokenizer has {tokenizer.get_vocab_size()} entries but preset {preset.name} has vocab_size"
            f" {preset.vocab_size}; use --set vocab_size={tokenizer.get_vocab_size()} or another tokenizer"
        )

    # Every group must fill at least one sequence, and every worker needs at least one document.
    seq_len = config.sequence_length
    for group in spec.groups:
        docs = train_docs.get(group, 0) if spec.mix else sum(train_docs.values())
        if docs < config.num_workers:
            raise D.CorpusError(f"group {group!r} has {docs} training documents, fewer than {config.num_workers} workers")
        tokens = 0
        for text in D.iter_documents(spec, group, split="train", seed=config.seed, epoch=0):
            tokens += len(tokenizer.encode(text).ids) + 1
            if tokens >= seq_len:
                break
        if tokens < seq_len:
            raise D.CorpusError(
                f"corpus {config.corpus} ({config.mix_by}={group}) holds {tokens} training tokens,"
                f" shorter than one sequence of {seq_len}"
            )

    identity = run_identity(config, preset, D.tokenizer_fingerprint(tokenizer))
    run_path = output / "run.json"
    if run_path.is_file():
        saved = json.loads(run_path.read_text())
        if saved.get("identity") != identity:
            raise PretrainError(
                f"{output} holds a run that differs from this one ({_describe_difference(saved.get('identity', {}), identity)});"
                f" resume with the same settings or choose another --output"
            )
    else:
        write_json_atomic(run_path, {"identity": identity, "config": config.to_dict()})
    if config.pretokenize:
        D.pretokenize(spec, tokenizer, output / "tokens")
    for name, path in config.eval_corpora.items():
        D.find_corpus_files(path)  # fail now on a missing eval corpus, not at the first evaluation
    return identity


def _limited_rows(spec: D.CorpusSpec, limit: int):
    count = 0
    for path in spec.files:
        for group, text in D.iter_file_rows(Path(path), spec.group_by):
            if spec.group_of(group) is None:
                continue
            yield group, text
            count += 1
            if count >= limit:
                return


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(output: Path) -> Path | None:
    root = output / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.pt").is_file():
            return candidate
    complete = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file())
    return complete[-1] if complete else None


def save_checkpoint(output: Path, step: int, state: dict, model_config, keep: int) -> Path:
    """Write checkpoints/step_N as a whole: into a temp folder, renamed into place, then point `latest` at it."""
    import torch

    root = output / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=root))
    try:
        torch.save(state, tmp / "state.pt")
        model_config.to_json_file(tmp / "config.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_text_atomic(root / "latest", final.name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rewrite_metrics_up_to(path: Path, step: int) -> None:
    """Drop metric lines a killed run logged after its last checkpoint: the resumed run logs those steps again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- MFU


def detect_peak_flops(device) -> float | None:
    """Peak bf16 FLOP/s of one accelerator from its name; None on CPU or an unknown device (MFU is then n/a)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS_BF16.items():  # ordered so "H100 PCIe" matches before "H100"
        if key in name:
            return flops
    log.warning("unknown accelerator %r: pass --peak-flops to report MFU", name)
    return None


# --------------------------------------------------------------------------- the loop


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    rank, world = _distributed()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def build_train_data(config: TrainConfig, tokenizer, rank: int, world: int) -> D.SequenceMixer:
    spec = config.corpus_spec()
    weights = dict(spec.mix) if spec.mix else {D.ALL_GROUP: 1.0}
    groups: dict[str, Any] = {}
    if config.pretokenize:
        index = json.loads((Path(config.output) / "tokens" / "tokens.json").read_text())
        for group in spec.groups:
            groups[group] = D.MemmapGroup(
                path=Path(config.output) / "tokens" / index["groups"][group]["path"], dtype=index["dtype"],
                group=group, seq_len=config.sequence_length, seed=config.seed, rank=rank, world_size=world,
            )
    else:
        for group in spec.groups:
            groups[group] = D.StreamingGroup(
                spec=spec, group=group, tokenizer=tokenizer, seq_len=config.sequence_length, seed=config.seed,
                rank=rank, world_size=world, shuffle_buffer=config.shuffle_buffer,
                sequence_shuffle=config.sequence_shuffle,
            )
    return D.SequenceMixer(groups, weights, config.seed)


def build_eval_sets(config: TrainConfig, tokenizer) -> dict[str, np.ndarray]:
    """Fixed evaluation sequences: the corpus's held-out documents, plus each --eval-corpus."""
    count = config.eval_batches * config.micro_batch
    sets: dict[str, np.ndarray] = {}
    if config.heldout_fraction > 0:
        spec = config.corpus_spec()
        texts = (t for path in spec.files for g, t in D.iter_file_rows(Path(path), spec.group_by)
                 if spec.group_of(g) is not None and D.is_heldout(t, spec.heldout_fraction))
        heldout = D.first_sequences(texts, tokenizer, config.sequence_length, count)
        if len(heldout):
            sets["heldout"] = heldout
        else:
            log.warning("held-out split (%.2f%% of documents) is shorter than one sequence: no held-out loss;"
                        " raise --heldout-fraction or pass --eval-corpus", 100 * config.heldout_fraction)
    for name, path in config.eval_corpora.items():
        texts = (t for f in D.find_corpus_files(path) for _, t in D.iter_file_rows(f, config.mix_by))
        sequences = D.first_sequences(texts, tokenizer, config.sequence_length, count)
        if not len(sequences):
            raise D.CorpusError(f"eval corpus {name}={path} is shorter than one sequence of {config.sequence_length}")
        sets[name] = sequences
    return sets


def train_loop(config: TrainConfig, *, device=None, report: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """The training loop. Assumes `prepare(config)` ran (on this machine or the Ray driver)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from transformers import PhiForCausalLM

    rank, world = _distributed()
    if world != config.num_workers:
        raise PretrainError(f"world size {world} does not match --num-workers {config.num_workers}")
    is_main = rank == 0
    output = Path(config.output)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and config.use_gpu else "cpu"))
    if device.type == "cpu" and config.cpu_threads:
        # On a shared CPU, fewer threads than cores avoids OpenMP spin-waiting against other processes.
        torch.set_num_threads(config.cpu_threads)
    preset = config.model_preset
    tokenizer = D.load_tokenizer(output / "tokenizer")
    seq_len = config.sequence_length

    # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's anyway).
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model_config = preset.to_phi_config(eos_token_id=tokenizer.token_to_id(D.EOS_TOKEN))
    model = PhiForCausalLM(model_config).to(device)
    raw_model = model
    if config.activation_checkpointing:
        # Recompute each block's activations in backward: trades ~30% more compute for memory.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # Decay matrices only: decaying biases and LayerNorm gains just pulls them to zero for nothing.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]

    def make_optimizer(m_decay, m_no_decay):
        return torch.optim.AdamW(
            [{"params": m_decay, "weight_decay": config.weight_decay}, {"params": m_no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
            fused=device.type == "cuda",
        )

    train_data = build_train_data(config, tokenizer, rank, world)
    eval_sets = build_eval_sets(config, tokenizer)

    # Resume: load into the unwrapped model before DDP/FSDP sees it.
    start_step, checkpoint = 0, None
    checkpoint_dir = latest_checkpoint(output)
    if checkpoint_dir is not None:
        checkpoint = torch.load(checkpoint_dir / "state.pt", map_location="cpu", weights_only=False)
        if checkpoint["preset"] != preset.to_dict():
            raise PretrainError(f"checkpoint {checkpoint_dir} was written for preset {checkpoint['preset']['name']!r}"
                                f" with other fields; this run uses {preset.name!r}")
        if len(checkpoint["data"]) != world:
            raise PretrainError(f"checkpoint {checkpoint_dir} was written by {len(checkpoint['data'])} workers;"
                                f" resume with --num-workers {len(checkpoint['data'])}")
        raw_model.load_state_dict(checkpoint["model"])
        start_step = checkpoint["step"]
        train_data.load_state_dict(checkpoint["data"][rank])
        if is_main:
            log.info("resuming from %s (step %d)", checkpoint_dir, start_step)
            _rewrite_metrics_up_to(output / "metrics.jsonl", start_step)

    if world > 1 and config.strategy == "fsdp":
        # FSDP2: shard each decoder block, then the root (embeddings, final norm, head).
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
        for block in model.model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = make_optimizer(decay, no_decay)
    # Linear warm-up, then phi-1.5's constant learning rate.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    if checkpoint is not None:
        if config.strategy == "fsdp" and world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, checkpoint["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"][rank])
    if world > 1 and config.strategy == "ddp":
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)

    def model_and_optimizer_state() -> tuple[dict, dict]:
        if world > 1 and config.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            return get_state_dict(raw_model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return raw_model.state_dict(), optimizer.state_dict()

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    peak = config.peak_flops or detect_peak_flops(device)
    flops_token = flops_per_token(preset, seq_len)
    total_steps = config.total_steps
    metrics_path = output / "metrics.jsonl"
    if is_main:
        counts = parameter_count(preset)
        log.info("model %s: %.2fM parameters (%.2fM non-embedding), %.3g FLOPs/token; %d steps of %d tokens"
                 " (%d workers x %d micro-batches x %d sequences x %d tokens), device %s, peak %s",
                 preset.name, counts["total"] / 1e6, counts["non_embedding"] / 1e6, flops_token, total_steps,
                 config.tokens_per_step, world, config.grad_accum, config.micro_batch, seq_len, device,
                 f"{peak:.3g} FLOP/s" if peak else "n/a")

    def evaluate() -> dict[str, float]:
        model.eval()
        losses: dict[str, float] = {}
        with torch.no_grad():
            for name, sequences in eval_sets.items():
                total, batches = 0.0, 0
                for start in range(0, len(sequences), config.micro_batch):
                    x = torch.from_numpy(sequences[start : start + config.micro_batch]).to(device)  # (B, T)
                    with autocast:
                        total += model(input_ids=x, labels=x).loss.item()
                    batches += 1
                losses[name] = total / batches
        model.train()
        return losses

    def write_metrics(record: dict) -> None:
        with open(metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def checkpoint_now(step: int) -> None:
        model_state, optimizer_state = model_and_optimizer_state()
        data_states = _gather(train_data.state_dict())
        rng_states = _gather(_rng_state())
        if is_main:
            state = {"step": step, "model": model_state, "optimizer": optimizer_state,
                     "scheduler": scheduler.state_dict(), "data": data_states, "rng": rng_states,
                     "preset": preset.to_dict(), "config": config.to_dict()}
            path = save_checkpoint(output, step, state, model_config, config.keep_checkpoints)
            log.info("checkpoint %s", path)
        if world > 1:
            dist.barrier()

    model.train()
    step = start_step
    last_loss = float("nan")
    last_eval: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    tokens_per_s = 0.0
    while step < total_steps:
        # One optimiser step: grad_accum micro-batches; DDP syncs gradients only on the last one.
        loss_sum = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            x = torch.from_numpy(train_data.next_batch(config.micro_batch)).to(device, non_blocking=True)  # (B, T)
            sync = micro == config.grad_accum - 1 or not isinstance(model, DDP)
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                # PhiForCausalLM shifts labels itself: position t predicts token t+1.
                loss = model(input_ids=x, labels=x).loss / config.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1

        if step % config.log_every == 0 or step == total_steps:
            if world > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG if device.type == "cuda" else dist.ReduceOp.SUM)
                if device.type != "cuda":  # gloo has no AVG
                    loss_sum /= world
            last_loss = loss_sum.item()
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * config.tokens_per_step / elapsed
            mfu = flops_token * tokens_per_s / (peak * world) if peak else None
            lr = scheduler.get_last_lr()[0]
            record = {"kind": "train", "step": step, "loss": last_loss, "lr": lr,
                      "grad_norm": float(grad_norm) if grad_norm is not None else None,
                      "tokens": step * config.tokens_per_step, "tokens_per_s": tokens_per_s, "mfu": mfu,
                      "time": time.time()}
            if is_main:
                mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                print(f"step {step} loss={last_loss:.4f} lr={lr:.2e} tokens/s={tokens_per_s:,.0f} mfu={mfu_text}",
                      flush=True)
                write_metrics(record)
            if report is not None:
                report({k: v for k, v in record.items() if v is not None and k != "kind"})
            window_start, window_steps = time.perf_counter(), 0

        if eval_sets and (step % config.eval_every == 0 or step == total_steps):
            last_eval = evaluate()
            if is_main:
                print(f"step {step} " + " ".join(f"eval_{k}_loss={v:.4f}" for k, v in last_eval.items()), flush=True)
                write_metrics({"kind": "eval", "step": step, "tokens": step * config.tokens_per_step,
                               "eval_loss": last_eval, "time": time.time()})

        if step % config.checkpoint_every == 0 or step == total_steps:
            checkpoint_now(step)

    # The final model as transformers loads it: PhiForCausalLM.from_pretrained(OUTPUT/model).
    model_state, _ = model_and_optimizer_state()  # a collective under FSDP: every rank joins
    if is_main:
        final_dir = output / "model"
        tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=output))
        raw_model.save_pretrained(tmp, state_dict=model_state)
        shutil.copy(output / "tokenizer" / D.TOKENIZER_FILE, tmp / D.TOKENIZER_FILE)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    summary = {"step": step, "loss": last_loss, "eval_loss": last_eval, "tokens": step * config.tokens_per_step,
               "tokens_per_s": tokens_per_s, "data": train_data.state_dict()["drawn_per_group"]}
    if is_main:
        write_json_atomic(output / "summary.json", summary)
        log.info("done: %s", json.dumps(summary))
    return summary


def train(config: TrainConfig) -> dict[str, Any]:
    """Check and run a single-process training run (the CLI's path without --num-workers)."""
    prepare(config)
    return train_loop(config)
