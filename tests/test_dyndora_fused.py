"""DynDoRA's fused CPU layer (issue 17, item 9) against the composed ops it replaces.

The reference is the layer's forward before the change (nn.Dropout, F.linear, addmm), kept here
verbatim. A training run through the runner's own step (tiny RoBERTa, dropout on everywhere, pruning
events included) must give bit-identical losses, weights, method state and RNG stream."""

from __future__ import annotations

import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from dora.methods import TaskInfo, build_method
from dora.methods.dyndora.layer import DynDoRALinear, _AdaptedLinearCPU
from dora.models import load_backbone
from dora.step import train_step
from tests.helpers import compose


def composed_forward(self, x):
    """DynDoRALinear.forward before issue 17 (the reference arithmetic)."""
    y = self.base_layer(x)
    h = F.linear(self.dropout(x), self.lora_A)
    b = self.lora_B * (self.lora_c * self.scaling).to(self.lora_B.dtype)
    out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]).to(y.dtype), b.T.to(y.dtype))
    return out.view(y.shape)


def build(steps: int, *overrides: str):
    cfg = compose("model=tiny_roberta", "method=dora", "budget=low", *overrides)
    torch.manual_seed(0)
    backbone = load_backbone(cfg.model, "seq_cls", 2)
    method = build_method(cfg.method, cfg.budget)
    info = TaskInfo("t", "seq_cls", backbone.family, backbone.head_prefixes, steps)
    model = method.apply(backbone.model, info).train()
    return model, method


def train(model, method, steps: int, seed: int = 7):
    """The runner's own step (dora.step.train_step): forward, + DEM, backward, clip, AdamW, schedule,
    pruning hook, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=4e-3, weight_decay=0.01)
    trainee = SimpleNamespace(model=model, method=method, optimizer=opt, total_steps=steps,
                              scheduler=get_linear_schedule_with_warmup(opt, 2, steps))  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    losses = []
    for step in range(1, steps + 1):
        n = int(torch.randint(9, 20, (), generator=g))  # dynamic lengths, padded rows
        ids = torch.randint(3, model.config.vocab_size, (4, n), generator=g)
        mask = torch.ones_like(ids)
        mask[1, n // 2 :] = 0
        labels = torch.randint(0, 2, (4,), generator=g)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        losses.append(train_step(trainee, batch, step, max_grad_norm=1.0).loss.item())
    return losses, torch.rand(4)  # the next random numbers: the dropout draws consumed alike


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_training_is_bit_identical_to_the_composed_ops(threads):
    steps = 24
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, method = build(steps, "method.prune_interval=2", "method.dropout=0.1")
        ref_model, ref_method = build(steps, "method.prune_interval=2", "method.dropout=0.1")  # same init
        for m in ref_method.layers:
            m.forward = types.MethodType(composed_forward, m)
        got = train(model, method, steps)
        want = train(ref_model, ref_method, steps)
    finally:
        torch.set_num_threads(before)
    assert got[0] == want[0]  # every loss, exactly
    assert torch.equal(got[1], want[1])
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    for key, value in ref_method.state_dict().items():
        assert torch.equal(method.state_dict()[key], value), key
    assert method.budget_history() == ref_method.budget_history() and len(method.budget_history()) > 3


def test_fused_node_is_used_on_cpu_and_composed_ops_elsewhere():
    model, _ = build(10)
    layer = next(m for m in model.modules() if isinstance(m, DynDoRALinear))
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == _AdaptedLinearCPU.__name__ + "Backward"
    with torch.no_grad():
        assert layer(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the composed ops, bf16 output
        assert layer(x).dtype == torch.bfloat16
    layer.eval()  # no dropout: the fused node equals the composed ops exactly, gradients too
    out = layer(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    ref = composed_forward(layer, x)
    (rx,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.equal(out, ref) and torch.equal(gx, rx)


def test_fast_dropout_rng_is_opt_in_seeded_and_keeps_the_rate():
    model, _ = build(10, "method.dropout_rng=fast", "method.dropout=0.25")
    layer = next(m for m in model.modules() if isinstance(m, DynDoRALinear))
    assert layer.dropout_rng == "fast"
    with torch.no_grad():
        layer.lora_c.fill_(1.0)
    x = torch.ones(64, 128, layer.in_features)

    def adapter_input_mask(seed):
        torch.manual_seed(seed)
        h = {}
        hook = layer.lora_A.register_hook(lambda g: h.setdefault("dA", g))
        layer(x).sum().backward()
        hook.remove()
        return h["dA"]

    a, b, c = adapter_input_mask(1), adapter_input_mask(1), adapter_input_mask(2)
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded by torch's generator
    torch.manual_seed(3)
    from dora.methods.dyndora.layer import _keep_noise

    keep = _keep_noise(x, 0.25, "fast")
    assert keep.dtype == x.dtype and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert abs(keep.mean().item() - 0.75) < 0.005
