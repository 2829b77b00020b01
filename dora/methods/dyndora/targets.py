"""Which layers DynDoRA adapts in a Hugging Face model: presets per architecture family, or the user's
own names/patterns. Targets are ``nn.Linear`` or GPT-2's ``Conv1D`` (a linear whose weight is stored
transposed, (d_in, d_out)).
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

LINEAR_TYPES = (nn.Linear, Conv1D)

# Preset name -> a regex that must match the whole module name (re.fullmatch), with the model types
# (config.model_type) that select it. ``(.*\.)?`` admits any prefix: "model.", "roberta.encoder.", none.
_LLAMA = r"(.*\.)?layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_ENCODER = (
    r"(.*\.)?layer\.\d+\.(attention\.self\.(query|key|value)(_proj)?|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)
PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Llama / Mistral / Qwen2-style decoders: attention q, k, v, o and the gated MLP (7 per layer)
    "llama": (_LLAMA, ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")),
    # GPT-2 (Conv1D): attn.c_attn (fused q, k, v), attn.c_proj, mlp.c_fc and mlp.c_proj (4 per layer);
    # the two c_proj are different matrices, told apart by their parent (attn vs mlp)
    "gpt2": (r"(.*\.)?h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))", ("gpt2",)),
    # BERT / RoBERTa / DeBERTa-v2 encoders: q, k, v, attention output, FFN in and out (6 per layer,
    # docs/dyndora.md#adapted-matrices)
    "bert": (_ENCODER, ("bert", "roberta", "xlm-roberta", "deberta-v2")),
    # BART: q, k, v, out of every attention (decoder: self and cross), fc1, fc2 (6 / 10 per layer,
    # docs/dyndora.md#adapted-matrices)
    "bart": (r"(.*\.)?layers\.\d+\.((self_attn|encoder_attn)\.(q|k|v|out)_proj|fc1|fc2)", ("bart", "mbart")),
    # T5: q, k, v, o of self- and cross-attention, and the FFN (wi or gated wi_0/wi_1, wo)
    "t5": (
        r"(.*\.)?block\.\d+\.layer\.\d+\.((SelfAttention|EncDecAttention)\.(q|k|v|o)|DenseReluDense\.(wi|wi_0|wi_1|wo))",
        ("t5", "mt5"),
    ),
}
MODEL_TYPES = {model_type: preset for preset, (_, types) in PRESETS.items() for model_type in types}


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]


def summarise(names: list[str]) -> str:
    """Distinct module names with layer indices folded (``layers.N.self_attn.q_proj``), for messages."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", n) for n in names))


def pattern_for(model: nn.Module, preset: str | None) -> str:
    """The preset regex named ``preset``, or the one of ``model.config.model_type``."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown DynDoRA preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
        return PRESETS[preset][0]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPES:
        names = [n for n, _ in linear_modules(model)]
        raise ValueError(
            f"DynDoRA has no target preset for model_type {model_type!r} (presets cover "
            f"{', '.join(sorted(MODEL_TYPES))}); pass target_modules (a list of names or a regex) chosen "
            f"from its linear/Conv1D modules: {summarise(names) or 'none'}"
        )
    return PRESETS[MODEL_TYPES[model_type]][0]


def matches(name: str, targets: str | list[str]) -> bool:
    """A regex string must match the whole name; a list entry matches the name or its dotted suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(
    model: nn.Module, targets: str | list[str] | None, preset: str | None, exclude: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every adapted linear/Conv1D, in module order; modules under ``exclude`` (the
    trained head) are never adapted."""
    if targets is None:
        targets = pattern_for(model, preset)
    found = [
        (n, m)
        for n, m in linear_modules(model)
        if matches(n, targets) and not any(n == p or n.startswith(p + ".") for p in exclude)
    ]
    if not found:
        names = [n for n, _ in linear_modules(model)]
        raise ValueError(
            f"DynDoRA target_modules={targets!r} matches no linear/Conv1D module; the model has: "
            f"{summarise(names) or 'none'}"
        )
    return found
