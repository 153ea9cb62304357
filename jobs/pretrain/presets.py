"""Model presets: the Phi architecture at the size phi-1.5 used, and small
sizes that train on a CPU. A preset is a frozen record of the fields that
define the network; `PhiConfig` is built from it so nothing is downloaded.

Every field can be overridden from the command line (`--set field=value`),
checked against the ranges below before any training starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    """The fields of a Phi model. Names follow `PhiConfig` where they exist."""

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    # phi-1.5 rotates only the first 32 of each head's 64 dimensions.
    partial_rotary_factor: float
    max_position_embeddings: int  # the context length the model is built for
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    # phi-1.5 trains without dropout; kept as fields so small-data runs can add it.
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    hidden_act: str = "gelu_new"
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_phi_config(self, eos_token_id: int | None = None):
        """The transformers `PhiConfig` for this preset, with PyTorch SDPA attention."""
        from transformers import PhiConfig

        config = PhiConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            resid_pdrop=self.resid_pdrop,
            embd_pdrop=self.embd_pdrop,
            attention_dropout=self.attention_dropout,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            use_cache=False,  # training only: a KV cache would just hold memory
            tie_word_embeddings=self.tie_word_embeddings,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.partial_rotary_factor,
            },
            partial_rotary_factor=self.partial_rotary_factor,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
        )
        config._attn_implementation = "sdpa"
        return config


PRESETS: dict[str, ModelPreset] = {
    # phi-1.5 (Li et al. 2023, "Textbooks Are All You Need II"): 24 layers, 32 heads of 64,
    # rotary dimension 32, context 2048, the codegen-mono tokenizer padded to 51200 entries.
    "phi-1.5": ModelPreset(
        name="phi-1.5",
        vocab_size=51200,
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        intermediate_size=8192,
        partial_rotary_factor=0.5,
        max_position_embeddings=2048,
    ),
    # ~5.3M parameters: learns visible structure from a few hundred thousand tokens on 2 CPU
    # cores (bench/ablation.py). A 4096-entry vocabulary keeps the output head from dominating.
    "small": ModelPreset(
        name="small",
        vocab_size=4096,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        partial_rotary_factor=0.5,
        max_position_embeddings=256,
    ),
    # ~0.17M parameters: a step takes milliseconds on a CPU; for tests and smoke runs.
    "tiny": ModelPreset(
        name="tiny",
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        partial_rotary_factor=0.5,
        max_position_embeddings=64,
    ),
}

# field -> (minimum, maximum), inclusive; checked on every override.
_RANGES: dict[str, tuple[float, float]] = {
    "vocab_size": (16, 1_048_576),
    "hidden_size": (8, 65_536),
    "num_hidden_layers": (1, 512),
    "num_attention_heads": (1, 1024),
    "intermediate_size": (1, 262_144),
    "partial_rotary_factor": (0.0, 1.0),
    "max_position_embeddings": (2, 1_048_576),
    "rope_theta": (1.0, 1e9),
    "layer_norm_eps": (1e-12, 1e-1),
    "resid_pdrop": (0.0, 0.99),
    "embd_pdrop": (0.0, 0.99),
    "attention_dropout": (0.0, 0.99),
    "initializer_range": (1e-6, 1.0),
}
_ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")


class PresetError(ValueError):
    """A preset name, an override or a combination of fields that cannot build a model."""


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["hidden_size=128", ...]` -> {"hidden_size": "128"}; values are converted by `resolve_preset`."""
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PresetError(f"--set expects field=value, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _convert(field: dataclasses.Field, raw: Any) -> Any:
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[field.type]
    if not isinstance(raw, str):
        return kind(raw)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise PresetError(f"{field.name} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise PresetError(f"{field.name} must be {kind.__name__}, got {raw!r}") from None


def resolve_preset(name: str, overrides: dict[str, Any] | None = None) -> ModelPreset:
    """The named preset with `overrides` applied, every field range-checked."""
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    fields = {f.name: f for f in dataclasses.fields(ModelPreset) if f.name != "name"}
    changes: dict[str, Any] = {}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise PresetError(f"unknown model field {key!r} in --set; fields: {', '.join(fields)}")
        changes[key] = _convert(fields[key], raw)
    preset = dataclasses.replace(preset, **changes)
    validate_preset(preset)
    return preset


def validate_preset(preset: ModelPreset) -> None:
    for key, (low, high) in _RANGES.items():
        value = getattr(preset, key)
        if not low <= value <= high:
            raise PresetError(f"{key}={value} is out of range [{low:g}, {high:g}] (preset {preset.name})")
    if preset.hidden_size % preset.num_attention_heads:
        raise PresetError(
            f"hidden_size={preset.hidden_size} is not divisible by num_attention_heads={preset.num_attention_heads}"
        )
    if preset.rotary_dim % 2:
        raise PresetError(
            f"rotary dimension head_dim*partial_rotary_factor={preset.head_dim}*{preset.partial_rotary_factor}"
            f" = {preset.rotary_dim} must be even (rotary embeddings rotate pairs of dimensions)"
        )
    if preset.hidden_act not in _ACTIVATIONS:
        raise PresetError(f"hidden_act={preset.hidden_act!r} is not one of {', '.join(_ACTIVATIONS)}")


def parameter_count(preset: ModelPreset) -> dict[str, int]:
    """Parameters by part, from the shapes PhiForCausalLM builds (checked against the real model in tests)."""
    d, f, v, n_layers = preset.hidden_size, preset.intermediate_size, preset.vocab_size, preset.num_hidden_layers
    per_layer = (
        4 * (d * d + d)  # q, k, v, dense projections with biases
        + (d * f + f) + (f * d + d)  # fc1, fc2
        + 2 * d  # one LayerNorm per block: phi runs attention and MLP in parallel from the same norm
    )
    embedding = v * d
    head = (0 if preset.tie_word_embeddings else v * d) + v  # lm_head has a bias in phi
    final_norm = 2 * d
    total = embedding + n_layers * per_layer + final_norm + head
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(preset: ModelPreset, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention scores.

    The weight term counts every parameter that takes part in a matmul, so the input embedding
    (a lookup) is left out and the output head is kept. The attention term is the PaLM paper's
    12 * layers * hidden * seq_len (QK^T and attention-weighted V, forward and backward), with
    the full seq_len even though causal SDPA skips half: this is the convention MFU anchors
    (PaLM, nanoGPT, TinyLlama) use, so figures stay comparable.
    """
    counts = parameter_count(preset)
    return 6.0 * counts["non_embedding"] + 12.0 * preset.num_hidden_layers * preset.hidden_size * seq_len
