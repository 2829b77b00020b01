"""One test matrix every registered method runs through, on tiny RoBERTa and tiny BART.

Methods come from the registry (``dora.methods.METHODS``): a new method is covered by registering it.
Per method and backbone: only the method's parameters and the head change during training; the output
at init equals the base model's (``init_identity``: "exact" by default, "near" for small random inits,
None to skip); a save/load round trip reproduces the outputs and the method state; ``budget_params``
equals the closed form after T steps; merging (where ``merge`` gives a model) leaves outputs unchanged.
What a method declares for these checks (defaults on dora.methods.base.Method): ``init_identity``,
``trains_backbone`` (full, BitFit), ``closed_form_params(model, family)`` (default for budgeted methods:
r x sum of d_in + d_out).
Method-specific checks of the PEFT baselines (AdaLoRA schedule and regulariser, PEFT export) follow.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, compose, run_inprocess
from peft import PeftModel
from safetensors.torch import load_file

from dora.methods import METHODS, TaskInfo, build_method
from dora.methods._peft import PeftMethod
from dora.methods.base import is_head
from dora.models import adapted_linears, load_backbone
from dora.results import save_tensors
from dora.step import train_step

MODELS = ("tiny_roberta", "tiny_bart")
STEPS = 6  # T of the matrix runs: long enough for every schedule to finish its allocation
MATRIX = [(m, b) for m in METHODS.names() for b in MODELS]
PEFT_METHODS = [e.name for e in METHODS if issubclass(e.cls, PeftMethod)]  # LoRA, AdaLoRA, ...


# -- building blocks ------------------------------------------------------------------------------
@functools.cache
def configs(method: str, model: str, budget: str = "low"):
    """(model, method, budget) config objects, composed as the CLI composes them."""
    cfg = compose(f"method={method}", f"model={model}", f"budget={budget}", "task=rte")
    return cfg.model, cfg.method, cfg.budget


def fresh(method: str, model: str, budget: str = "low", steps: int = STEPS):
    """A freshly initialised tiny backbone (same weights every call), the method and its TaskInfo."""
    model_cfg, method_cfg, budget_cfg = configs(method, model, budget)
    torch.manual_seed(0)
    backbone = load_backbone(model_cfg, "seq_cls", 2)
    info = TaskInfo("rte", "seq_cls", backbone.family, backbone.head_prefixes, steps)
    return backbone, build_method(method_cfg, budget_cfg), info


def batch(seed: int, n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """Random byte tokens between <s> and one </s> (BART classifies from the single eos)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 250, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = torch.arange(n) % 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@torch.no_grad()
def logits(model, seed: int = 99) -> torch.Tensor:
    model.eval()
    return model(**batch(seed)).logits


def train(model, method, steps: int = STEPS) -> None:
    """The runner's own step (dora.step.train_step) at a constant learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    trainee = SimpleNamespace(
        model=model, method=method, optimizer=optimizer, scheduler=constant, total_steps=steps
    )
    model.train()
    for step in range(1, steps + 1):
        assert train_step(trainee, batch(step), step, max_grad_norm=1.0).stepped


def head_param(name: str, prefixes) -> bool:
    """Head parameter, also under PEFT's wrappers (``classifier.modules_to_save.default.*``)."""
    return is_head(name.removeprefix("base_model.model."), prefixes)


@functools.cache
def trained(method: str, model: str):
    """Train once per (method, backbone); tests read (but never modify) the result."""
    backbone, m, info = fresh(method, model)
    backbone_params = {
        id(p) for n, p in backbone.model.named_parameters() if not is_head(n, info.head_prefixes)
    }
    net = m.apply(backbone.model, info)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    train(net, m)
    return net, m, info, before, backbone_params


# -- the matrix -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "model"), MATRIX)
def test_only_method_params_and_head_change(method, model):
    net, m, info, before, backbone_params = trained(method, model)
    changed = set()
    for name, p in net.named_parameters():
        same = torch.equal(p.detach(), before[name])
        assert p.requires_grad or same, f"frozen parameter {name} changed"
        if not same:
            changed.add(name)
    heads = {n for n in changed if head_param(n, info.head_prefixes)}
    assert heads, "the task head must train"
    assert changed - heads, "the method's own parameters must train"
    if not m.trains_backbone:
        leaked = [n for n, p in net.named_parameters() if p.requires_grad and id(p) in backbone_params]
        assert not leaked, f"backbone parameters left trainable: {leaked[:3]}"


@pytest.mark.parametrize(("method", "model"), MATRIX)
def test_output_at_init_equals_base_model(method, model):
    kind = METHODS.get(method).cls.init_identity
    if kind is None:
        pytest.skip(f"{method} does not start as the base model")
    backbone, m, info = fresh(method, model)
    base = logits(backbone.model)
    out = logits(m.apply(backbone.model, info))
    if kind == "exact":
        torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
    else:  # near identity: a small perturbation, not an identical model
        torch.testing.assert_close(out, base, rtol=0, atol=5e-2)


@pytest.mark.parametrize(("method", "model"), MATRIX)
def test_save_load_round_trip(method, model, tmp_path):
    net, m, info, _, _ = trained(method, model)
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    save_tensors(tmp_path / "trainable.safetensors", trainable)  # as the runner saves them
    state = m.state_dict()
    if state:
        save_tensors(tmp_path / "state.safetensors", state)
    backbone, m2, _ = fresh(method, model)
    net2 = m2.apply(backbone.model, info)
    missing, unexpected = net2.load_state_dict(load_file(tmp_path / "trainable.safetensors"), strict=False)
    assert not unexpected
    assert not {n for n, p in net2.named_parameters() if p.requires_grad} & set(missing)
    if state:
        m2.load_state_dict(load_file(tmp_path / "state.safetensors"))
        assert_same_tensors(m2.state_dict(), m.state_dict())
    torch.testing.assert_close(logits(net2), logits(net), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("method", "model"), MATRIX)
def test_budget_params_equal_closed_form(method, model):
    """Active components x (d_in + d_out) summed over the adapted matrices, r per matrix on average
    (docs/dyndora.md#parameter-counts). Adaptive methods (rank_pattern) may spread r unevenly over
    matrices of different shapes, so their count follows their final pattern (why the paper lists
    AdaLoRA at 1.27M, not 1.33M)."""
    net, m, info, _, _ = trained(method, model)
    base, _, _ = fresh(method, model)
    budget = m.budget_params(net)
    closed_form = m.closed_form_params(base.model, info.family)
    if closed_form is not None:
        assert budget == closed_form
    elif m.uses_budget:
        sizes = {n: lin.in_features + lin.out_features for n, lin in adapted_linears(base.model, info.family)}
        pattern = m.rank_pattern(net)
        ranks = pattern if pattern is not None else dict.fromkeys(sizes, m.budget.rank)
        assert ranks.keys() == sizes.keys()
        assert sum(ranks.values()) == m.budget.rank * len(sizes)
        assert budget == sum(ranks[n] * sizes[n] for n in sizes)
    else:
        backbone = sum(
            p.numel() for n, p in base.model.named_parameters() if not is_head(n, info.head_prefixes)
        )
        assert 0 < budget <= backbone


@pytest.mark.parametrize(("method", "model"), MATRIX)
def test_merge_is_equivalent(method, model):
    net, m, *_ = trained(method, model)
    net, m = copy.deepcopy((net, m))  # merging is destructive; the cached run stays intact
    expected = logits(net)
    merged = m.merge(net)
    if merged is None:
        pytest.skip(f"{method} has no merge")
    torch.testing.assert_close(logits(merged), expected, rtol=1e-5, atol=1e-5)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# -- PEFT baselines: what the generic matrix cannot see ----------------------------------------------
# PEFT checks rank_pattern keys against module names, but AdaLoRA's own keys name parameters
# ("<module>.lora_E"), so loading any saved AdaLoRA adapter warns about every key: a false alarm
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match:RuntimeWarning")
@pytest.mark.parametrize("method", PEFT_METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_peft_export_reloads_with_head(method, model, tmp_path):
    """``export`` writes a folder plain PEFT reloads, trained head too (docs/dyndora.md#saved-adapters)."""
    net, m, *_ = trained(method, model)
    path = m.export(net, tmp_path)
    backbone, _, _ = fresh(method, model)
    reloaded = PeftModel.from_pretrained(backbone.model, str(path))
    torch.testing.assert_close(logits(reloaded), logits(net), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_adalora_regulariser_equals_peft_and_is_not_in_forward(model):
    backbone, m, info = fresh("adalora", model)
    net = m.apply(backbone.model, info)
    with torch.no_grad():  # A and B far from orthogonal, so the regulariser is not ~0
        for p in net.parameters():
            if p.requires_grad:
                p.mul_(3.0)
    net.eval()
    b = batch(1)
    adalora_forward = m.peft.base_model  # AdaLoraModel.forward: where PEFT adds its regulariser
    plain = net(**b).loss  # the trained module: no regulariser hidden in forward
    assert torch.equal(adalora_forward(**b).loss, plain)  # PEFT's own copy is switched off
    m.peft.peft_config["default"].orth_reg_weight = m.cfg.orth_reg_weight
    peft_added = adalora_forward(**b).loss - plain
    m.peft.peft_config["default"].orth_reg_weight = 0.0
    extra = m.extra_loss(net, 1)
    assert extra.item() > 1e-3
    torch.testing.assert_close(extra, peft_added, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget", ["low", "high"])
def test_adalora_reaches_target_rank(budget):
    net, m, info, *_ = trained("adalora", "tiny_roberta") if budget == "low" else _adalora_high()
    matrices = len(m.rank_pattern(net))
    assert matrices == 12  # 6 per layer, 2 layers
    target = m.budget.rank * matrices
    assert m.init_r == {"low": 3, "high": 12}[budget]
    assert sum(m.rank_pattern(net).values()) == target
    history = m.budget_history()
    assert history[-1] == [STEPS - int(m.cfg.tfinal * STEPS), target]  # final allocation at T - t_final
    active = [a for _, a in history]
    assert active == sorted(active, reverse=True) and active[0] <= m.init_r * matrices


@functools.cache
def _adalora_high():
    backbone, m, info = fresh("adalora", "tiny_roberta", "high")
    net = m.apply(backbone.model, info)
    train(net, m)
    return net, m, info


def test_adalora_config_rejects_a_schedule_without_budgeting_phase():
    cls = METHODS.get("adalora").config
    with pytest.raises(ValueError, match="tinit"):
        cls(tinit=0.5, tfinal=0.5)


@pytest.mark.parametrize("steps", [2, 3, 4])
@pytest.mark.parametrize("tfinal", [0.46, 0.51, 0.8])  # the RTE and SQuAD recipes, and a long final phase
def test_adalora_allocates_on_the_shortest_runs(steps, tfinal):
    """PEFT's final allocation reads importance scores from earlier steps: with T = 2 and the SQuAD
    recipe (tfinal 0.51 -> 1) it came at step 1, before any score existed (KeyError). t_final <= T - 2
    keeps one step first."""
    backbone, _, info = fresh("adalora", "tiny_roberta", steps=steps)
    _, method_cfg, budget_cfg = configs("adalora", "tiny_roberta")
    m = build_method(dataclasses.replace(method_cfg, tinit=0.1, tfinal=tfinal), budget_cfg)
    net = m.apply(backbone.model, info)
    train(net, m, steps)
    t_final = m.schedule(steps)[1]  # in steps
    assert t_final <= steps - 2
    assert m.budget_history()[-1] == [steps - t_final, m.budget.rank * 12]


def test_adalora_one_step_run_is_one_error_line():
    from dora.errors import UserError

    backbone, m, info = fresh("adalora", "tiny_roberta", steps=1)
    with pytest.raises(UserError, match="needs at least 2 optimizer steps .* T=1: raise trainer.max_steps"):
        m.apply(backbone.model, info)


@pytest.mark.slow  # ~35 s on two busy cores: the whole runner, tokenisation and export
def test_adalora_end_to_end_with_grad_accumulation(tmp_path, data_dir):
    """Through the runner: allocation on real optimizer steps only, result.json and export filled."""
    r = run_inprocess(
        tmp_path,
        "task=rte",
        "method=adalora",
        "model=tiny_roberta",
        f"data_dir={data_dir}",
        "task.splits.train=train:0:64",
        "task.splits.dev=dev:0:32",
        "trainer.batch_size=8",
        "trainer.grad_accum=2",
        "trainer.epochs=3",
        "method.delta_t=1",
    )
    steps = 3 * 64 // 16
    assert r["timing"]["steps"] == steps
    matrices = len(r["rank_pattern"])
    assert matrices == 12 and sum(r["rank_pattern"].values()) == 2 * matrices
    tfinal = int(r["config"]["method"]["tfinal"] * steps)  # the adalora_rte recipe sets the fraction
    assert r["budget_history"][-1] == [steps - tfinal, 2 * matrices]
    ffn = ("intermediate.dense", ".output.dense")  # (d_in + d_out) = 32 + 64; attention: 32 + 32
    sizes = {n: 96 if n.endswith(ffn) and "attention" not in n else 64 for n in r["rank_pattern"]}
    assert r["params"]["budget"] == sum(k * sizes[n] for n, k in r["rank_pattern"].items())
    config = json.loads((tmp_path / "run" / "peft_adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == steps


def test_baseline_recipes_cite_a_source_and_apply():
    """Every baseline's configs/recipe/<method>.yaml says where its values come from (tests/test_configs.py
    composes and validates each with every task); the recipe applies and the command line wins."""
    for method in ("lora", "adalora", "houlsby", "pfeiffer"):
        path = REPO / "configs" / "recipe" / f"{method}.yaml"
        assert path.read_text().splitlines()[1].startswith("# "), f"{path.name} gives no source"
    cfg = compose("method=adalora", "task=rte", "trainer.epochs=3")  # the recipe applies, the CLI wins
    assert (cfg.trainer.lr, cfg.trainer.epochs, cfg.method.tinit, cfg.method.delta_t) == (1.2e-3, 3, 0.15, 1)
