"""DynDoRA outputs: a standard PEFT LoRA adapter (``peft_lora/``) and the Figure-2 rank heatmap."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import torch
from torch import nn

from dora.methods.dyndora.layer import DynDoRALinear, unwrap

PEFT_TASK_TYPES = {
    "seq_cls": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "qa": "QUESTION_ANS",
    "seq2seq": "SEQ_2_SEQ_LM",
}


def lora_weights(layer: DynDoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The active components as LoRA factors: A (k, d_in) and B·diag(c) (d_out, k); pruned dropped."""
    keep = layer.lora_c.detach() != 0
    a = layer.lora_A.detach()[keep]
    b = (layer.lora_B.detach().float() * layer.lora_c.detach())[:, keep].to(layer.lora_B.dtype)
    return a, b


def export_peft(model: nn.Module, layers: dict[str, DynDoRALinear], head: str, head_prefixes, cfg, out: Path):
    """Write ``out`` as a LoRA adapter (``cfg``: the method config, for α and dropout) that plain ``PeftModel.from_pretrained(base, out)`` loads.

    Per module: rank k = active components, ``alpha_pattern`` = α·k/r' so PEFT's scaling α_m/k equals
    DynDoRA's α/r'; gates are folded into B; the task head is a module to save."""
    from peft import LoraConfig, get_peft_model

    factors = {name: lora_weights(layer) for name, layer in layers.items()}
    ranks = {name: a.shape[0] for name, (a, _) in factors.items() if a.shape[0] > 0}
    if not ranks:
        raise ValueError("every DynDoRA component is pruned: nothing to export")
    r_init = next(iter(layers.values())).r_init
    config = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=cfg.alpha,
        target_modules=sorted(ranks),
        rank_pattern=ranks,
        alpha_pattern={name: cfg.alpha * k / r_init for name, k in ranks.items()},
        lora_dropout=cfg.dropout,
        bias="none",
        modules_to_save=list(head_prefixes) or None,
        task_type=PEFT_TASK_TYPES.get(head),
    )
    base = unwrap(copy.deepcopy(model).cpu(), list(layers), merge=False)  # trained head, frozen W0
    peft_model = get_peft_model(base, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name in ranks:
            a, b = factors[name]
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(str(out))
    return config


# -- Figure 2: active components per (matrix type × layer) ---------------------------------------
_ENCODER_ROWS = {
    "attention.self.query": "Wq",
    "attention.self.key": "Wk",
    "attention.self.value": "Wv",
    "attention.output.dense": "Wo",
    "intermediate.dense": "Wf1",
    "output.dense": "Wf2",
}
_BART_KINDS = {"q_proj": "Wq", "k_proj": "Wk", "v_proj": "Wv", "out_proj": "Wo"}


def cell(name: str) -> tuple[str, str]:
    """(row, column) of a module in the heatmap: row = matrix type, column = layer, numbered from 1 as
    in the paper's Figure 2 (and scripts/figures.py). BART: decoder self- and cross-attention are
    separate rows; columns enc1.., dec1.."""
    m = re.search(r"(encoder|decoder)\.layers\.(\d+)\.(.+)$", name)
    if m:
        stack, layer, rest = m.groups()
        column = f"{stack[:3]}{int(layer) + 1}"
        if rest in ("fc1", "fc2"):
            return "W" + rest[:1] + rest[2:], column  # Wf1 / Wf2
        attn, proj = rest.split(".")
        return ("cross " if attn == "encoder_attn" else "self ") + _BART_KINDS[proj], column
    m = re.search(r"layer\.(\d+)\.(.+)$", name)
    if not m:
        raise ValueError(f"cannot place module {name!r} in the rank heatmap")
    return _ENCODER_ROWS[m.group(2)], str(int(m.group(1)) + 1)


def rank_grid(pattern: dict[str, int]) -> tuple[list[str], list[str], list[list[float]]]:
    """Rows, columns (first-seen order) and values (NaN where a matrix does not exist)."""
    cells = {cell(name): k for name, k in pattern.items()}
    rows = list(dict.fromkeys(r for r, _ in cells))
    order = ["Wq", "Wk", "Wv", "Wo", "Wf1", "Wf2"]
    rows.sort(key=lambda r: (r.startswith("cross"), order.index(r.split()[-1])))
    cols = list(dict.fromkeys(c for _, c in cells))
    grid = [[float(cells.get((r, c), math.nan)) for c in cols] for r in rows]
    return rows, cols, grid


def save_heatmap(pattern: dict[str, int], r_init: int, path: Path) -> None:
    """Figure-2-style heatmap of the final active components, written with the Agg canvas (no pyplot)."""
    from matplotlib.figure import Figure

    rows, cols, grid = rank_grid(pattern)
    values = [v for row in grid for v in row if not math.isnan(v)]
    fig = Figure(figsize=(max(6.0, 0.6 * len(cols) + 2), max(3.0, 0.45 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=r_init)
    fig.colorbar(image, ax=ax, label="active components")
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel("layer")
    ax.set_title(f"DynDoRA rank distribution: mean {sum(values) / max(len(values), 1):.2f}, r' = {r_init}")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                color = "black" if v > 0.6 * r_init else "white"  # readable on viridis' light end
                ax.text(j, i, f"{int(v)}", ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
