"""Backbone families (dora.families): a new backbone is one Family entry plus one model YAML.

DeBERTa-v3 is such an entry (configs/model/deberta_v3_base.yaml); it runs through the harness here at
tiny random-init sizes (``model.source=tiny``: no download). A toy DistilBERT family, registered by the
test alone, shows that nothing else has to change: adapted matrices, adapter sites, the head, depth and
width, and the Figure-2 grid all follow from the entry.
"""

from __future__ import annotations

import pytest

from dora import families
from dora.errors import UserError
from dora.families import Family
from dora.models import adapted_linears, load_backbone
from tests.helpers import compose, run_inprocess

FIG2_ROWS = ["Wq", "Wk", "Wv", "Wo", "Wf1", "Wf2"]
ENCODER_SIZES = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
TINY_DEBERTA = ["model=deberta_v3_base", "model.source=tiny", f"++model.tiny={ENCODER_SIZES}"]
DISTILBERT = Family(
    "distilbert",
    "DistilBertConfig",
    layer=r"\.layer\.(?P<layer>\d+)\.",
    matrices={"attention.q_lin": "Wq", "attention.k_lin": "Wk", "attention.v_lin": "Wv"}
    | {"attention.out_lin": "Wo", "ffn.lin1": "Wf1", "ffn.lin2": "Wf2"},
    attention_output="attention.out_lin",
    ffn_output="ffn.lin2",
    depth=("n_layers",),
    width="dim",
    pooler="pre_classifier",
)
TINY_DISTILBERT = ["model=roberta_base", "model.family=distilbert", "model.source=tiny"]
TINY_DISTILBERT += ["++model.tiny={dim: 32, n_layers: 2, n_heads: 2, hidden_dim: 64}"]


@pytest.fixture
def distilbert(monkeypatch):
    """The toy family, registered for this test only."""
    monkeypatch.setitem(families.FAMILIES, DISTILBERT.name, DISTILBERT)
    return DISTILBERT


def short_run(tmp_path, data_dir, *overrides: str) -> dict:
    """A 6-step RTE run on a 48-example slice; returns result.json."""
    return run_inprocess(
        tmp_path, "task=rte", f"data_dir={data_dir}", "trainer.max_steps=6", "trainer.batch_size=8",
        "trainer.max_length=48", "task.splits.train=train:0:48", "task.splits.dev=dev:0:16", *overrides,
    )  # fmt: skip


def backbone(*overrides: str):
    cfg = compose("task=rte", *overrides).model
    return load_backbone(cfg, "seq_cls", 2)


def test_deberta_builds_with_its_matrices_pooler_and_sizes():
    built = backbone(*TINY_DEBERTA)
    names = [n for n, _ in adapted_linears(built.model, "deberta")]
    assert len(names) == 2 * 6 and names[0] == "deberta.encoder.layer.0.attention.self.query_proj"
    assert built.head_prefixes == ("classifier", "pooler")  # ContextPooler trains with the classifier
    assert families.get("deberta").sizes(built.model.config) == (2, 32)
    grid = families.rank_grid(dict.fromkeys(names, 3))
    assert grid.rows == FIG2_ROWS and grid.cols == ["1", "2"] and (grid.values == 3).all()


@pytest.mark.parametrize("method", ["dora", "houlsby"])
def test_deberta_runs_through_the_harness(method, tmp_path, data_dir):
    knobs = ["method.prune_interval=2"] if method == "dora" else []
    r = short_run(tmp_path, data_dir, f"method={method}", *knobs, *TINY_DEBERTA)
    assert r["model"] == "deberta_v3_base" and r["config"]["model"]["family"] == "deberta"
    if method == "dora":
        kinds = {name.split(".")[-1] for name in r["rank_pattern"]}
        assert len(r["rank_pattern"]) == 12 and kinds == {"query_proj", "key_proj", "value_proj", "dense"}
        assert (tmp_path / "run" / "peft_lora" / "adapter_model.safetensors").exists()
    else:  # two adapters per layer (after attention.output.dense and output.dense), m = 4 r = 8, d = 32
        assert r["params"]["budget"] == 2 * 2 * (2 * 32 * 8 + 8 + 32)


def test_a_registered_toy_family_needs_nothing_else(distilbert, tmp_path, data_dir):
    """DistilBERT's names, depth and width fields and head differ from every built-in family."""
    built = backbone(*TINY_DISTILBERT)
    assert built.head_prefixes == ("classifier", "pre_classifier")
    names = [n for n, _ in adapted_linears(built.model, "distilbert")]
    assert names[:2] == [
        "distilbert.transformer.layer.0.attention.q_lin",
        "distilbert.transformer.layer.0.attention.k_lin",
    ]
    r = short_run(tmp_path, data_dir, "method=pfeiffer", *TINY_DISTILBERT)
    assert r["params"]["budget"] == 2 * 1 * (2 * 32 * 16 + 16 + 32)  # one adapter per layer after ffn.lin2
    r = short_run(tmp_path / "dora", data_dir, "method=dora", "method.prune_interval=2", *TINY_DISTILBERT)
    grid = families.rank_grid(r["rank_pattern"])
    assert grid.rows == FIG2_ROWS and grid.cols == ["1", "2"]
    assert grid.values.sum() == sum(r["rank_pattern"].values()) == 12 * 2  # b(T) = 2 per matrix


def test_unknown_family_is_one_line_naming_the_valid_ones():
    with pytest.raises(UserError, match=r"model.family=.gpt9.; valid: bart, bert, deberta, roberta"):
        compose("task=rte", "model.family=gpt9")
