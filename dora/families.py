"""Backbone families: everything the harness knows about an architecture, in one table.

A family says which linear layers the adapter methods adapt (the paper's six matrices per encoder layer, ten
per BART decoder layer; docs/dyndora.md#adapted-matrices) and their rows in the Figure-2 rank heatmap, after
which matrices the bottleneck adapters sit, how to read depth and width off a transformers config, and how
to build a random-init model of it. ``configs/model/<name>.yaml`` names a family (``family: roberta``), so a
new backbone is one ``Family`` entry here plus one YAML. Nothing here imports torch: the command-line checks
validate ``model.family`` against this table before torch loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

# Figure 2's rows: query, key, value, attention output, feed-forward in and out (the paper's labels)
ENCODER_MATRICES = {
    "attention.self.query": "Wq",
    "attention.self.key": "Wk",
    "attention.self.value": "Wv",
    "attention.output.dense": "Wo",
    "intermediate.dense": "Wf1",
    "output.dense": "Wf2",
}
_BART_ATTENTION = {"q_proj": "Wq", "k_proj": "Wk", "v_proj": "Wv", "out_proj": "Wo"}


@dataclass(frozen=True)
class Family:
    """One architecture family. ``matrices`` maps a matrix's name inside a layer to its heatmap row (in
    the heatmap's row order); ``layer`` is the regex of a layer's prefix, with a ``layer`` group (the
    index) and, for encoder-decoders, a ``stack`` group (encoder / decoder)."""

    name: str
    config_class: str  # transformers config class of a random-init model (model.source=tiny)
    layer: str
    matrices: dict[str, str]
    attention_output: str  # the matrix after which Houlsby's attention adapter sits
    ffn_output: str  # the matrix after which the feed-forward adapter sits (Houlsby, Pfeiffer)
    depth: tuple[str, ...] = ("num_hidden_layers",)  # config fields that sum to the number of layers
    width: str = "hidden_size"  # config field of the hidden size d
    encoder_decoder: bool = False  # has a decoder: can build a seq2seq (generation) head
    pooler: str | None = None  # module between encoder and classifier, trained with a sentence head
    tiny_defaults: dict = field(default_factory=dict)  # config values a random-init model needs

    @property
    def targets(self) -> re.Pattern:
        """Matches (``search``) the full name of every adapted matrix; group ``matrix`` names it."""
        names = "|".join(re.escape(m) for m in self.matrices)
        return re.compile(f"{self.layer}(?P<matrix>{names})$")

    def sizes(self, config) -> tuple[int, int]:
        """(layers, d) of a transformers config: BART counts encoder and decoder layers."""
        return sum(getattr(config, f) for f in self.depth), getattr(config, self.width)

    def cell(self, module_name: str) -> tuple[str, str] | None:
        """(heatmap row, column) of an adapted matrix, or None for another module. Columns number the
        layers from 1, as the paper's Figure 2; encoder-decoders prefix the stack (enc1.., dec1..)."""
        m = self.targets.search(module_name)
        if m is None:
            return None
        layer = int(m.group("layer")) + 1
        stack = m.groupdict().get("stack")
        return self.matrices[m.group("matrix")], f"{stack[:3]}{layer}" if stack else str(layer)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the table (``model.family`` accepts its name from then on)."""
    FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


register(
    Family(
        "roberta",
        "RobertaConfig",
        layer=r"\.layer\.(?P<layer>\d+)\.",
        matrices=ENCODER_MATRICES,
        attention_output="attention.output.dense",
        ffn_output="output.dense",
    )
)
register(
    Family(
        "bert",  # BERT-style encoders, e.g. all-MiniLM-L6-v2; their pooler trains with the sentence head
        "BertConfig",
        layer=r"\.layer\.(?P<layer>\d+)\.",
        matrices=ENCODER_MATRICES,
        attention_output="attention.output.dense",
        ffn_output="output.dense",
        pooler="bert.pooler",
    )
)
register(
    Family(
        "bart",  # q, k, v, out of every attention (decoder: self and cross), fc1, fc2: 6 / 10 per layer
        "BartConfig",
        layer=r"(?P<stack>encoder|decoder)\.layers\.(?P<layer>\d+)\.",
        matrices={f"self_attn.{p}": f"self {w}" for p, w in _BART_ATTENTION.items()}
        | {"fc1": "Wf1", "fc2": "Wf2"}
        | {f"encoder_attn.{p}": f"cross {w}" for p, w in _BART_ATTENTION.items()},
        attention_output="self_attn.out_proj",  # cross-attention gets no adapter (AdapterHub's default)
        ffn_output="fc2",
        depth=("encoder_layers", "decoder_layers"),
        width="d_model",
        encoder_decoder=True,
        tiny_defaults={"decoder_start_token_id": 2, "forced_eos_token_id": 2},
    )
)

register(
    Family(
        "deberta",  # DeBERTa-v2/v3 (model_type deberta-v2): q, k, v are *_proj; ContextPooler before classifier
        "DebertaV2Config",
        layer=r"\.layer\.(?P<layer>\d+)\.",
        matrices={f"attention.self.{m}_proj": w for m, w in (("query", "Wq"), ("key", "Wk"), ("value", "Wv"))}
        | {"attention.output.dense": "Wo", "intermediate.dense": "Wf1", "output.dense": "Wf2"},
        attention_output="attention.output.dense",
        ffn_output="output.dense",
        pooler="pooler",
    )
)


def family_of(names) -> Family:
    """The first family whose adapted matrices include every name (roberta and bert share names)."""
    names = list(names)
    for family in FAMILIES.values():
        if names and all(family.targets.search(n) for n in names):
            return family
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise ValueError(f"no model family adapts the modules {shown or '(none)'}")


class RankGrid(NamedTuple):
    rows: list[str]  # matrix labels, the family's order
    cols: list[str]  # layers, numbered from 1 (enc1.., dec1.. for encoder-decoders)
    values: object  # numpy array (rows, cols); NaN where a layer has no such matrix


def rank_grid(pattern: dict[str, float], family: Family | None = None) -> RankGrid:
    """A rank pattern (module name -> active components) as a Figure-2 grid: every matrix row of the
    family, every layer from the first to the last of each stack."""
    import numpy as np

    family = family or family_of(pattern)
    cells = {family.cell(name): k for name, k in pattern.items()}
    if None in cells:
        raise ValueError(f"a module of the rank pattern is not one of family {family.name!r}'s matrices")
    rows = list(dict.fromkeys(family.matrices.values()))
    cols = _columns([c for _, c in cells])
    values = np.full((len(rows), len(cols)), np.nan)
    for (row, col), k in cells.items():
        values[rows.index(row), cols.index(col)] = k
    return RankGrid(rows, cols, values)


def _columns(seen: list[str]) -> list[str]:
    """Layers 1..last of each stack, stacks in first-seen order."""
    last: dict[str, int] = {}
    for col in seen:
        stack, layer = re.fullmatch(r"(\D*)(\d+)", col).groups()
        last[stack] = max(last.get(stack, 0), int(layer))
    return [f"{stack}{i}" for stack, n in last.items() for i in range(1, n + 1)]
