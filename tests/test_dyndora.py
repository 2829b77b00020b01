"""DynDoRA (method=dora, Dynamic Rank Distribution): layer, scores, schedule, DEM, state, export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, BartConfig, RobertaConfig

from dora.config import BudgetConfig
from dora.families import rank_grid
from dora.methods import TaskInfo
from dora.methods.dyndora import DynDoRA, DynDoRAConfig
from dora.methods.dyndora.allocator import Schedule
from dora.methods.dyndora.layer import DynDoRALinear
from dora.methods.dyndora.method import initial_rank
from dora.models import adapted_linears

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=60)


def tiny_roberta(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = RobertaConfig(max_position_embeddings=40, pad_token_id=1, num_labels=2, **TINY)
    return AutoModelForSequenceClassification.from_config(config).eval()


def make_method(
    total_steps=100, rank=2, head_prefixes=("classifier",), family="roberta", head="seq_cls", **knobs
):
    knobs = {"dropout": 0.0, "prune_interval": 10, **knobs}
    method = DynDoRA(DynDoRAConfig(**knobs), BudgetConfig(name="low", rank=rank))
    info = TaskInfo("rte", head, family, head_prefixes, total_steps)
    return method, info


def adapted(total_steps=100, seed=0, **knobs):
    """(base copy, adapted model, method) on a tiny random RoBERTa."""
    base = tiny_roberta(seed)
    model = copy.deepcopy(base)
    method, info = make_method(total_steps, **knobs)
    method.apply(model, info)
    return base, model, method


def batch(seed: int = 0, n: int = 3, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 60, (n, length), generator=g),
        "attention_mask": torch.ones(n, length),
    }


def randomise_gates(method, seed=0, zero_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.layers:
            c = torch.randn(layer.r_init, generator=g)
            c[torch.rand(layer.r_init, generator=g) < zero_frac] = 0
            layer.lora_c.copy_(c)


def nudge(method, g, scale=0.05):
    """Stand-in for an optimizer step: moves every gate, pruned ones included (they may revive)."""
    with torch.no_grad():
        for layer in method.layers:
            layer.lora_c.add_(scale * torch.randn(layer.r_init, generator=g))


# -- config and schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"warmup_frac": 0.5, "final_frac": 0.5},
        {"dem_coef": -0.1},
        {"prune_interval": 0},
        {"init_ratio": 0.9},
        {"ema_beta": 1.0},
        {"dem_norm": "mean"},
        {"dropout": 1.0},
    ],
)
def test_config_rejects_impossible_settings(bad):
    with pytest.raises(ValueError, match="method\\."):
        DynDoRAConfig(**bad)


def test_initial_rank_is_ceil_of_ratio_times_r():
    assert [initial_rank(1.5, r) for r in (2, 4, 8, 16)] == [3, 6, 12, 24]
    assert initial_rank(1.1, 10) == 11 and initial_rank(1.0, 2) == 2 and initial_rank(1.25, 2) == 3


def test_schedule_sst2_worked_example():
    """DynDoRAConfig docstring: SST-2, T = 1,053 × 60 = 63,180, roberta-base (72 matrices), r = 8 / 2."""
    high = Schedule.build(63180, 0.15, 0.5, 10, 72, 12, 8)
    assert (high.warmup, high.last, high.last_step, high.n_components) == (9477, 22113, 31590, 864)
    assert [high.is_event(s) for s in (9476, 9477, 9478, 9487, 31587, 31588, 31590, 31591)] == [
        False, True, False, True, True, False, True, False,
    ]  # fmt: skip
    assert [high.n_pruned(s) for s in (9477, 19477, 29477, 31590)] == [0, 26, 213, 288]
    assert len(high.events()) == 2212 + 1  # q = 0, 10, ..., 22110 and the last, q = Q = 22113
    low = Schedule.build(63180, 0.15, 0.5, 10, 72, 3, 2)
    assert [low.n_pruned(s) for s in (19477, 29477, 31590)] == [6, 53, 72]
    assert low.n_components - low.n_pruned(low.last_step) == 72 * 2


def test_schedule_degenerate_lengths_still_reach_the_final_event():
    for total in (1, 2, 3, 7):
        s = Schedule.build(total, 0.15, 0.5, 10, 4, 3, 2)
        assert 1 <= s.last_step <= total and s.is_event(s.last_step)
        assert s.n_pruned(s.last_step) == 4


# -- layer ---------------------------------------------------------------------------------------
def test_identity_at_init_and_targets():
    base, model, method = adapted()
    assert len(method.layers) == 2 * 6 and all(isinstance(m, DynDoRALinear) for m in method.layers)
    layer = method.layers[0]
    assert layer.lora_c.dtype == torch.float32 and not layer.lora_c.any()
    assert layer.lora_B.abs().sum() > 0  # B is Kaiming-uniform, not zero (unlike LoRA)
    assert layer.lora_A.abs().max() <= (6 / layer.in_features) ** 0.5
    assert layer.scaling == 8.0 / 3
    x = batch()
    torch.testing.assert_close(model(**x).logits, base(**x).logits, rtol=0, atol=0)


def test_gradients_reach_only_adapter_and_head():
    _, model, method = adapted()
    model.train()
    model(**batch(), labels=torch.tensor([0, 1, 1])).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable)
    layer = method.layers[0]
    # c = 0: only the gates get a gradient at the first step
    assert layer.lora_c.grad.abs().sum() > 0 and not layer.lora_A.grad.any() and not layer.lora_B.grad.any()


# -- scores and DEM --------------------------------------------------------------------------------
def test_closed_form_scores_equal_materialised_ones():
    _, _, method = adapted()
    randomise_gates(method)
    naive = []
    for m in method.layers:
        c, a, b = m.lora_c.detach(), m.lora_A.detach(), m.lora_B.detach()
        parts = torch.einsum("i,oi,id->iod", c, b, a)  # ΔW_i, (r', d_out, d_in)
        naive.append(parts.norm(dim=(1, 2)) / (parts.sum(0).norm() + 1e-8))
    torch.testing.assert_close(method.allocator.scores(), torch.stack(naive), rtol=1e-4, atol=1e-6)


def test_dem_value_normalisations_and_switch_off():
    _, model, method = adapted(total_steps=100, dem_coef=0.5)
    naive = sum(m.lora_A.var(dim=1).sum() + m.lora_B.var(dim=0).sum() for m in method.layers)
    n = len(method.layers) * 3
    torch.testing.assert_close(method.allocator.dem("code"), naive / (2 * n))
    torch.testing.assert_close(method.allocator.dem("paper"), naive / n)
    last = method.schedule.last_step  # 15 + 35 = 50 = 0.5·T
    assert last == 50
    torch.testing.assert_close(method.extra_loss(model, last), 0.5 * naive / (2 * n))
    assert method.extra_loss(model, last + 1) is None
    method.extra_loss(model, 1).backward()
    assert method.layers[0].lora_A.grad.abs().sum() > 0  # DEM trains A and B
    _, model0, no_dem = adapted(dem_coef=0.0)
    assert no_dem.extra_loss(model0, 1) is None  # η = 0: the "without DEM" ablation


# -- pruning schedule on a simulated run -------------------------------------------------------------
def simulate(method, steps, g, on_step=None):
    for step in steps:
        nudge(method, g)
        method.after_optimizer_step(step, method.schedule.total_steps)
        if on_step:
            on_step(step)


def test_pruning_follows_schedule_final_budget_exact_and_permanent():
    _, model, method = adapted(total_steps=100)
    sched, n = method.schedule, method.schedule.n_components
    g = torch.Generator().manual_seed(1)
    simulate(method, range(1, sched.last_step + 1), g)
    expected = [[s, n - max(sched.n_pruned(s), 1)] for s in sched.events()]
    assert method.budget_history() == expected
    assert [s for s, _ in expected] == [15, 25, 35, 45, 50]
    assert method.best_from_step(100) == sched.last_step == 50  # best epoch: once pruning has ended
    final = method.allocator.final_keep.clone()
    assert int(final.sum()) == len(method.layers) * 2  # N·r exactly
    simulate(method, range(sched.last_step + 1, 101), g)  # gates move, the final mask re-applies
    gates = torch.stack([m.lora_c.detach() for m in method.layers])
    assert not gates[~final].any() and gates[final].all()
    pattern = method.rank_pattern(model)
    assert sum(pattern.values()) == len(method.layers) * 2
    dims = {m: m.in_features + m.out_features for m in method.layers}
    assert method.budget_params(model) == sum(
        k * dims[m] for k, m in zip(pattern.values(), method.layers, strict=True)
    )


def test_pruned_components_revive_between_events():
    _, _, method = adapted(total_steps=100)
    g = torch.Generator().manual_seed(2)
    simulate(method, range(1, 16), g)  # first event at step 15
    i, j = divmod(int(method.allocator.ema.argmin()), 3)  # the component pruned at step 15
    assert method.layers[i].lora_c[j] == 0
    with torch.no_grad():  # the optimizer makes it important again
        method.layers[i].lora_c[j] = 100.0

    def check(step):
        if step < 25:  # no mask between events: the revived gate keeps its value
            assert method.layers[i].lora_c[j] != 0

    simulate(method, range(16, 26), g, check)
    assert method.layers[i].lora_c[j] != 0  # re-ranked and kept at the next event (step 25)


def test_no_pruning_when_initial_budget_equals_final():
    _, _, method = adapted(total_steps=60, init_ratio=1.0)
    simulate(method, range(1, 61), torch.Generator().manual_seed(3))
    assert all(active == method.schedule.n_components for _, active in method.budget_history())


# -- resume ----------------------------------------------------------------------------------------
def test_state_round_trip_resumes_exactly(tmp_path):
    _, model, method = adapted(total_steps=100)
    g = torch.Generator().manual_seed(4)
    simulate(method, range(1, 31), g)
    save_file(method.state_dict(), tmp_path / "state.safetensors")
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _, model2, resumed = adapted(total_steps=100, seed=1)
    model2.load_state_dict(weights, strict=False)
    resumed.load_state_dict(load_file(tmp_path / "state.safetensors"))
    g2 = copy.deepcopy(g)
    simulate(method, range(31, 101), g)
    simulate(resumed, range(31, 101), g2)
    assert resumed.budget_history() == method.budget_history()
    torch.testing.assert_close(resumed.allocator.ema, method.allocator.ema, rtol=0, atol=0)
    for a, b in zip(method.layers, resumed.layers, strict=True):
        torch.testing.assert_close(a.lora_c, b.lora_c, rtol=0, atol=0)
    with pytest.raises(ValueError, match="state mismatch"):
        resumed.load_state_dict({"ema": torch.zeros(3)})


# -- export and merge ------------------------------------------------------------------------------
def trained_like(seed=5):
    """An adapted model whose gates, A, B and head moved away from init (some gates zero)."""
    base, model, method = adapted()
    randomise_gates(method, seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("classifier."):
                p.add_(0.1 * torch.randn_like(p))
    return base, model, method


def test_export_loads_in_plain_peft_with_same_outputs(tmp_path):
    from peft import PeftModel

    base, model, method = trained_like()
    method.export(model, tmp_path)
    config = json.loads((tmp_path / "peft_lora" / "adapter_config.json").read_text())
    active = {k: v for k, v in method.rank_pattern(model).items() if v}
    assert config["rank_pattern"] == active and not config.get("use_dora")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft_lora"]  # the adapter only: plots are scripts'
    loaded = PeftModel.from_pretrained(base, tmp_path / "peft_lora").eval()
    x = batch(1)
    torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=1e-5, atol=1e-5)


def test_export_of_seq2seq_bart_loads_in_plain_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    sizes = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2)
    sizes |= dict(decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=60)
    base = AutoModelForSeq2SeqLM.from_config(BartConfig(max_position_embeddings=40, **sizes)).eval()
    model = copy.deepcopy(base)
    method, info = make_method(family="bart", head="seq2seq", head_prefixes=())
    method.apply(model, info)
    assert len(method.layers) == 6 + 10
    randomise_gates(method, seed=6)
    method.export(model, tmp_path)
    loaded = PeftModel.from_pretrained(base, tmp_path / "peft_lora").eval()
    x = {**batch(3), "decoder_input_ids": batch(4, length=5)["input_ids"]}
    torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=1e-5, atol=1e-5)


def test_merge_gives_plain_linears_and_same_outputs():
    _, model, method = trained_like()
    x = batch(2)
    before = model(**x).logits
    merged = method.merge(model)
    assert not any(isinstance(m, DynDoRALinear) for m in merged.modules())
    assert len(adapted_linears(merged, "roberta")) == 12
    torch.testing.assert_close(merged(**x).logits, before, rtol=1e-5, atol=1e-5)


# -- architectures ---------------------------------------------------------------------------------
def test_roberta_base_and_bart_targets():
    with torch.device("meta"):
        rb = AutoModelForSequenceClassification.from_config(RobertaConfig(num_labels=2))
        bart_base = BartConfig(
            d_model=768, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=3072, decoder_ffn_dim=3072
        )
        bart = AutoModelForSequenceClassification.from_config(bart_base)
    targets = adapted_linears(rb, "roberta")
    # 72 matrices (docs/dyndora.md#adapted-matrices); one unit of average rank = 165,888 parameters
    # (docs/dyndora.md#budgets)
    assert len(targets) == 72
    assert sum(m.in_features + m.out_features for _, m in targets) == 165_888
    names = [n for n, _ in adapted_linears(bart, "bart")]
    assert len(names) == 96
    rows, cols, grid = rank_grid(dict.fromkeys(names, 2))
    assert "self Wq" in rows and "cross Wq" in rows and len(rows) == 10
    assert cols[0] == "enc1" and cols[-1] == "dec6"  # layers numbered from 1, as the paper's Figure 2
    enc_cross = grid[rows.index("cross Wq")][cols.index("enc1")]
    assert enc_cross != enc_cross  # NaN: encoder layers have no cross-attention
    rows, cols, _ = rank_grid({n: 2 for n, _ in targets})
    assert rows == ["Wq", "Wk", "Wv", "Wo", "Wf1", "Wf2"] and cols == [str(i) for i in range(1, 13)]


# -- end to end ------------------------------------------------------------------------------------
def test_end_to_end_rte_writes_rank_pattern_and_budget_history(tmp_path, data_dir):
    from tests.helpers import run_inprocess

    r = run_inprocess(
        tmp_path,
        "task=rte", "method=dora", "model=tiny_roberta", "budget=low", f"data_dir={data_dir}",
        "trainer.max_steps=20", "trainer.batch_size=4", "trainer.max_length=48", "method.prune_interval=2",
        "task.splits.dev=dev:0:32", "task.splits.train=train:0:200",
    )  # fmt: skip
    assert r["budget"] == "low" and r["config"]["trainer"]["lr"] == 2e-3  # the RTE recipe, lr overridable
    assert r["config"]["method"]["dem_coef"] == 0.5 and r["config"]["method"]["prune_interval"] == 2
    sched = Schedule.build(20, 0.15, 0.5, 2, 12, 3, 2)
    assert [s for s, _ in r["budget_history"]] == sched.events() == [3, 5, 7, 9, 10]
    assert r["budget_history"][-1][1] == sum(r["rank_pattern"].values()) == 12 * 2
    # tiny_roberta: hidden 32, intermediate 64 -> d_in + d_out per matrix type
    dims = {"attention": 32 + 32, "intermediate": 32 + 64, "output": 64 + 32}
    kind = {n: next(t for t in dims if t in n) for n in r["rank_pattern"]}
    assert r["params"]["budget"] == sum(k * dims[kind[n]] for n, k in r["rank_pattern"].items())
    out = tmp_path / "run"
    assert (out / "peft_lora" / "adapter_model.safetensors").exists() and not list(out.glob("*.png"))
    state = load_file(out / "adapter" / "method_state.safetensors")
    assert state["history"].tolist() == r["budget_history"]


@pytest.mark.slow
def test_minilm_peft_export_reproduces_the_dev_metric(tmp_path, data_dir):
    """Issue 3, "Done when": peft_lora/ on the pretrained MiniLM through plain PEFT gives the run's metric."""
    from accelerate import Accelerator
    from peft import PeftModel
    from torch.utils.data import DataLoader

    from dora.models import load_backbone
    from tasks import build_task, evaluate_split
    from tests.helpers import compose, run_inprocess

    args = ["task=rte", "method=dora", "model=minilm", f"data_dir={data_dir}", "trainer.max_steps=12"]
    args += ["trainer.batch_size=8", "trainer.max_length=64", "task.splits.dev=dev:0:64"]
    r = run_inprocess(tmp_path, *args)
    c = compose(*args)
    task = build_task(c.task, str(data_dir))
    backbone = load_backbone(c.model, task.head, task.num_labels)  # pretrained body, random head
    model = PeftModel.from_pretrained(backbone.model, tmp_path / "run" / "peft_lora").eval()
    dev = task.load(backbone.tokenizer, 64).evals["dev"]
    loader = DataLoader(dev, 32, collate_fn=task.collator(backbone.tokenizer))
    metrics = evaluate_split(task, model, loader, Accelerator(cpu=True), "dev")
    assert metrics == r["metrics"]


def test_scores_and_ema_stay_fp32_under_a_float64_default(one_thread):
    """The score state is fp32 explicitly: a float64 default dtype (a user's script) must not break it."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _, model, method = adapted(total_steps=20)
        assert method.layers[0].lora_A.dtype == torch.float64
        g = torch.Generator().manual_seed(0)
        for step in range(1, 21):
            model(**batch(step)).logits.sum().backward()
            nudge(method, g)
            method.after_optimizer_step(step, 20)
            model.zero_grad()
    finally:
        torch.set_default_dtype(default)
    assert method.allocator.ema.dtype == torch.float32
    assert method.budget_history()[-1] == [method.schedule.last_step, 12 * 2]


def test_schedule_clock_departure_documented_in_method():
    """method.py states our events for T = 210 (0.15·T = 31.5, where the released clock runs one step
    later): 31, 41, …, 104 here."""
    events = Schedule.build(210, 0.15, 0.5, 10, 12, 3, 2).events()
    assert events[:2] == [31, 41] and events[-1] == 104
    assert Schedule.build(200, 0.15, 0.5, 10, 12, 3, 2).events() == list(range(30, 101, 10))
