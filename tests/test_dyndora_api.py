"""DynDoRA outside the harness (dora.dyndora): presets and Conv1D, export/merge on every supported model
type, the HF Trainer callback against the harness's own runner step, and Trainer checkpoint/resume."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BertConfig,
    DebertaV2Config,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    T5Config,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from dora.dyndora import (
    STATE_FILE,
    DynDoRAConfig,
    DynDoRAConv1D,
    DynDoRALinear,
    DynDoRATrainer,
    inject_dyndora,
)
from tests.helpers import REPO

V = 60  # vocabulary of the tiny models
ENC = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=V)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DEC = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
DEC |= dict(num_key_value_heads=1, vocab_size=V)
S2S = dict(
    d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2
)
S2S |= dict(encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=V, max_position_embeddings=40)


def build(family: str) -> nn.Module:
    """A tiny random-init model of each preset family (no download), in eval mode."""
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**DEC)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**DEC)).eval()
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=V, n_positions=40)
        ).eval()
    if family in ("bert", "roberta", "deberta-v2"):
        kind = {"bert": BertConfig, "roberta": RobertaConfig, "deberta-v2": DebertaV2Config}[family]
        config = kind(max_position_embeddings=40, pad_token_id=1, num_labels=2, **ENC)
        return AutoModelForSequenceClassification.from_config(config).eval()
    if family == "bart":
        return AutoModelForSeq2SeqLM.from_config(BartConfig(**S2S)).eval()
    if family == "t5":
        config = T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=V)
        return AutoModelForSeq2SeqLM.from_config(config).eval()
    raise ValueError(family)


def inputs(model: nn.Module, seed: int = 0, n: int = 2, length: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(3, V, (n, length), generator=g)}
    if model.config.is_encoder_decoder:
        x["decoder_input_ids"] = torch.randint(3, V, (n, 4), generator=g)
    return x


def randomise(controller, seed: int = 1) -> None:
    """Stand-in for training: random gates (about a third pruned) and a moved head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in controller.layers:
            c = torch.randn(layer.r_init, generator=g)
            c[torch.rand(layer.r_init, generator=g) < 0.3] = 0
            layer.lora_c.copy_(c)
        for name, p in controller.model.named_parameters():
            if p.requires_grad and ".lora_" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


# targets per family: (adapted matrices, of which Conv1D) on the 2-layer (1+1 for seq2seq) tiny models
FAMILIES = {
    "llama": 2 * 7,
    "qwen2": 2 * 7,
    "gpt2": 2 * 4,
    "bert": 2 * 6,
    "roberta": 2 * 6,
    "deberta-v2": 2 * 6,
    "bart": 6 + 10,
    "t5": 6 + 10,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_preset_injection_is_identity_at_init_and_trains_only_adapters(family, one_thread):
    model = build(family)
    x = inputs(model)
    with torch.no_grad():
        before = model(**x).logits
    dyndora = inject_dyndora(model, DynDoRAConfig(r=2, dropout=0.0), total_steps=10)
    assert len(dyndora.layers) == FAMILIES[family]
    assert all(isinstance(m, DynDoRAConv1D) == (family == "gpt2") for m in dyndora.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, before, rtol=0, atol=0)  # c = 0: ΔW = 0 exactly
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if ".lora_" not in n}
    assert heads == {n for n in trainable if n.startswith(("classifier", "score"))}  # only a seq-cls head
    assert len(trainable - heads) == 3 * FAMILIES[family]  # A, B, c per matrix
    randomise(dyndora)
    with torch.no_grad():
        assert not torch.allclose(model(**x).logits, before)  # the adapters are really in the forward


def test_gpt2_attention_and_mlp_c_proj_are_both_adapted():
    dyndora = inject_dyndora(build("gpt2"), DynDoRAConfig(r=2))
    names = [n.split("h.0.")[-1] for n in dyndora.names if ".h.0." in n]
    assert names == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    c_attn = dyndora.layers[0]  # Conv1D(3·16, 16): weight stored (d_in, d_out) = (16, 48)
    assert (
        c_attn.weight.shape == (16, 48) and c_attn.lora_A.shape == (3, 16) and c_attn.lora_B.shape == (48, 3)
    )


def test_unknown_model_type_error_lists_linear_modules():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="mystery")
            self.blocks = nn.ModuleList(
                nn.ModuleDict({"wq": nn.Linear(4, 4), "ff": nn.Linear(4, 8)}) for _ in range(2)
            )

    with pytest.raises(
        ValueError, match=r"no target preset for model_type 'mystery'.*blocks\.N\.wq, blocks\.N\.ff"
    ):
        inject_dyndora(Tiny(), DynDoRAConfig(r=2))
    picked = inject_dyndora(Tiny(), DynDoRAConfig(r=2, target_modules=["wq"]))
    assert picked.names == ["blocks.0.wq", "blocks.1.wq"]
    assert inject_dyndora(Tiny(), DynDoRAConfig(r=2, target_modules=r"blocks\.1\..*")).names == [
        "blocks.1.wq",
        "blocks.1.ff",
    ]
    with pytest.raises(ValueError, match="matches no linear/Conv1D module"):
        inject_dyndora(Tiny(), DynDoRAConfig(r=2, target_modules=["q_proj"]))


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match=r"DynDoRAConfig.r=0"):
        DynDoRAConfig(r=0)
    with pytest.raises(ValueError, match=r"DynDoRAConfig.dem_coef=-1"):
        DynDoRAConfig(dem_coef=-1)
    assert DynDoRAConfig(r=8).r_init == 12 and DynDoRAConfig(r=2, init_ratio=2).r_init == 4


def test_public_api_imports_without_hydra_or_matplotlib():
    code = "import sys; import dora.dyndora; print(sorted(m for m in ('hydra', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", (
        done.stderr[-2000:] + done.stdout
    )


# -- export and merge on every supported model type ------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "roberta", "bart", "t5"])
def test_export_loads_in_plain_peft_and_merge_reproduces_logits(family, tmp_path, one_thread):
    from peft import PeftModel

    base = build(family)
    model = copy.deepcopy(base)
    dyndora = inject_dyndora(model, DynDoRAConfig(r=2, dropout=0.0), total_steps=10)
    randomise(dyndora)
    x = inputs(model, seed=3)
    with torch.no_grad():
        trained = model(**x).logits
    dyndora.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {k: v for k, v in dyndora.rank_pattern().items() if v}
    assert not config["use_dora"] and config["fan_in_fan_out"] == (family == "gpt2")
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, trained, rtol=1e-5, atol=1e-5)
    merged = dyndora.merge()
    assert not any(isinstance(m, DynDoRALinear) for m in merged.modules())
    with torch.no_grad():  # W0 + ΔW rounds once more in fp32 than W0·x + ΔW·x
        torch.testing.assert_close(merged(**x).logits, trained, rtol=1e-4, atol=5e-5)


# -- the HF Trainer --------------------------------------------------------------------------------
T, BATCH = 30, 4
KNOBS = dict(r=2, dropout=0.0, dem_coef=0.1, prune_interval=5)  # T = 30: events at steps 4, 9, 14


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = RobertaConfig(max_position_embeddings=40, pad_token_id=1, num_labels=2, **ENC, **NO_DROPOUT)
    return AutoModelForSequenceClassification.from_config(config)


def dataset(n: int = T * BATCH, length: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (n, length), generator=g)
    labels = (ids[:, 0] > V // 2).long()  # learnable: the label is a property of the first token
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]  # fmt: skip


def training_args(out, **kw) -> TrainingArguments:
    kw = dict(per_device_train_batch_size=BATCH, max_steps=T, learning_rate=4e-3, warmup_steps=2, seed=0,
              max_grad_norm=1.0, report_to="none", save_strategy="no", logging_steps=1000, disable_tqdm=True,
              use_cpu=True, dataloader_num_workers=0) | kw  # fmt: skip
    return TrainingArguments(output_dir=str(out), **kw)


def adamw(model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    return optimizer, get_linear_schedule_with_warmup(optimizer, 2, T)


class Recording(DynDoRATrainer):
    """Keeps the batches the Trainer trained on, to feed the very same ones to the harness's runner."""

    def compute_loss(self, model, inputs, **kw):
        if model.training:
            self.batches.append({k: v.clone() for k, v in inputs.items()})
        return super().compute_loss(model, inputs, **kw)


def runner_replay(batches, seed: int):
    """The harness's method=dora through the runner's own optimizer step (dora.runner.micro_step)."""
    from accelerate import Accelerator

    from dora.config import BudgetConfig
    from dora.methods import TaskInfo
    from dora.methods.dyndora import DynDoRA
    from dora.methods.dyndora import DynDoRAConfig as MethodConfig
    from dora.runner import LossMeter, Progress, micro_step

    model = tiny_classifier()
    method = DynDoRA(MethodConfig(**{k: v for k, v in KNOBS.items() if k != "r"}), BudgetConfig("low", 2))
    torch.manual_seed(seed)  # the same A, B draws as inject_dyndora after the same seed
    method.apply(model, TaskInfo("sst2", "seq_cls", "roberta", ("classifier",), T))
    optimizer, scheduler = adamw(model)
    run = SimpleNamespace(
        accelerator=Accelerator(cpu=True), progress=Progress(), model=model, method=method,
        meter=LossMeter(torch.device("cpu")), cfg=OmegaConf.create({"trainer": {"max_grad_norm": 1.0}}),
        optimizer=optimizer, scheduler=scheduler, total_steps=T, scalars={},
    )  # fmt: skip
    model.train()
    for batch in batches:
        assert micro_step(run, batch)
    return model, method


def test_trainer_callback_matches_the_harness_runner(tmp_path, one_thread):
    """30 Trainer steps with the callback end at exactly N·r active components, with the allocation, the
    pruning history, the scores and the weights (bit for bit, on the CPU) of the harness's runner on the
    same init, batches and optimizer. η·DEM reaches the gradients through the mixin's loss hook."""
    model = tiny_classifier()
    torch.manual_seed(11)
    dyndora = inject_dyndora(model, DynDoRAConfig(**KNOBS, modules_to_save=["classifier"]))
    trainer = Recording(model=model, args=training_args(tmp_path), train_dataset=dataset(),
                        optimizers=adamw(model), dyndora=dyndora)  # fmt: skip
    trainer.batches = []
    trainer.train()
    assert len(trainer.batches) == T
    ref_model, method = runner_replay(trainer.batches, seed=11)

    n_matrices = len(dyndora.layers)
    assert sum(dyndora.rank_pattern().values()) == n_matrices * 2  # N·r
    assert dyndora.budget_history() == method.budget_history() and len(method.budget_history()) == 3
    assert dyndora.rank_pattern() == method.rank_pattern()
    assert torch.equal(dyndora.allocator.ema, method.allocator.ema)
    ours = {n: p for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: p for n, p in ref_model.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n], theirs[n]) for n in ours), [
        n for n in ours if not torch.equal(ours[n], theirs[n])
    ]


class Kill(TrainerCallback):
    """Simulates a crash: raises after optimizer step ``at`` (the checkpoint before it is on disk)."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"killed at step {self.at}")


def trainer_run(out, kill_at=None, resume=False):
    model = tiny_classifier()
    torch.manual_seed(11)
    dyndora = inject_dyndora(model, DynDoRAConfig(**KNOBS))
    args = training_args(out, save_strategy="steps", save_steps=10)
    trainer = DynDoRATrainer(model=model, args=args, train_dataset=dataset(), dyndora=dyndora)
    if kill_at:
        trainer.add_callback(Kill(kill_at))
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    else:
        trainer.train(resume_from_checkpoint=resume or None)
    return model, dyndora


def test_trainer_resume_from_checkpoint_gives_the_uninterrupted_run(tmp_path, one_thread):
    """Killed at step 12, resumed from checkpoint-10 (between the pruning events at steps 9 and 14, so
    the EMA scores must come back): the same final weights, allocation and scores, bit for bit."""
    whole, whole_dyndora = trainer_run(tmp_path / "whole")
    trainer_run(tmp_path / "cut", kill_at=12)
    assert (tmp_path / "cut" / "checkpoint-10" / STATE_FILE).is_file()
    resumed, resumed_dyndora = trainer_run(tmp_path / "cut", resume=True)

    assert resumed_dyndora.budget_history() == whole_dyndora.budget_history()
    assert resumed_dyndora.rank_pattern() == whole_dyndora.rank_pattern()
    assert sum(whole_dyndora.rank_pattern().values()) == len(whole_dyndora.layers) * 2
    assert torch.equal(resumed_dyndora.allocator.ema, whole_dyndora.allocator.ema)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]

    (tmp_path / "cut" / "checkpoint-30" / STATE_FILE).unlink()  # without its DynDoRA state ...
    with pytest.raises(FileNotFoundError, match="DynDoRA state"):  # ... a resume refuses to go on
        trainer_run(tmp_path / "cut", resume=True)


def lm_dataset(n: int = 40, length: int = 8) -> list[dict]:
    ids = torch.randint(3, V, (n, length), generator=torch.Generator().manual_seed(3))
    return [{"input_ids": x, "labels": x} for x in ids]


@pytest.mark.parametrize("kind", ["seq_cls", "causal_lm"])
def test_dem_enters_each_step_once_under_gradient_accumulation(kind, tmp_path, one_thread):
    """Batch 4 in one micro-batch or in 2 x 2 with gradient accumulation: the same run. The Trainer divides
    a mean loss by the accumulation steps itself (RoBERTa classification) but not a loss normalised over the
    whole accumulated batch (a causal LM with num_items_in_batch); η·DEM must come out once per step."""
    finals = []
    for batch, accumulation in ((4, 1), (2, 2)):
        if kind == "seq_cls":
            model, data = tiny_classifier(), dataset(40)
        else:
            torch.manual_seed(0)
            model, data = LlamaForCausalLM(LlamaConfig(**DEC)), lm_dataset()
        torch.manual_seed(11)
        dyndora = inject_dyndora(model, DynDoRAConfig(r=2, dropout=0.0, dem_coef=1.0, prune_interval=2))
        args = training_args(tmp_path / f"{batch}", per_device_train_batch_size=batch, max_steps=10,
                             gradient_accumulation_steps=accumulation)  # fmt: skip
        trainer = DynDoRATrainer(model=model, args=args, train_dataset=data, dyndora=dyndora)
        if kind == "seq_cls":  # RoBERTa's forward takes **kwargs but returns a per-micro-batch mean:
            trainer.loss_is_scaled_for_ga = False  # say so (the Trainer would otherwise not divide it)
        trainer.train()
        finals.append(
            (dyndora.rank_pattern(), {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
        )
    (pattern, one), (pattern2, accumulated) = finals
    assert pattern == pattern2
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
