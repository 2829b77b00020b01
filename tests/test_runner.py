"""End-to-end runs on tiny models: result contract, BitFit / full fine-tuning semantics, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dora.errors import UserError
from dora.runner import best_entry
from tests.helpers import REPO, cli_inprocess, compose, run_cli, run_inprocess

RESULT_KEYS = {
    "task",
    "method",
    "model",
    "seed",
    "budget",
    "status",
    "config",
    "metrics",
    "best",
    "history",
    "params",
    "timing",
    "env",
}
SMALL = [
    "model=tiny_roberta",
    "task.splits.train=train:0:256",
    "task.splits.dev=dev:0:64",
    "trainer.batch_size=16",
]


@pytest.fixture(scope="module")
def bitfit_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("bitfit")
    return tmp, run_inprocess(
        tmp,
        "task=rte",
        "method=bitfit",
        f"data_dir={data_dir}",
        "trainer.max_steps=12",
        "trainer.eval_every=5",
        *SMALL,
    )


def test_result_contract(bitfit_run):
    tmp, r = bitfit_run
    assert set(r) >= RESULT_KEYS
    assert (r["task"], r["method"], r["model"], r["seed"], r["budget"], r["status"]) == (
        "rte",
        "bitfit",
        "tiny_roberta",
        1,
        None,
        "ok",
    )
    assert 0 <= r["metrics"]["dev/accuracy"] <= 100
    assert [h["step"] for h in r["history"]] == [5, 10, 12]  # every 5 steps, and at the end
    assert r["metrics"]["dev/accuracy"] == r["history"][-1]["dev/accuracy"]
    assert r["best"]["dev/accuracy"] == max(h["dev/accuracy"] for h in r["history"])
    assert r["timing"]["steps"] == 12 and r["timing"]["samples_per_s"] > 0
    assert r["timing"]["threads"] == 1  # trainer.threads=null follows OMP_NUM_THREADS (1 in the tests)
    assert r["config"]["trainer"]["max_steps"] == 12 and r["config"]["output_dir"].endswith("run")
    assert set(r["env"]["versions"]) >= {"torch", "transformers"}
    assert (tmp / "run" / "config.yaml").is_file()


def test_bitfit_trains_exactly_the_biases_and_the_head(bitfit_run, data_dir):
    tmp, r = bitfit_run
    saved = load_file(tmp / "run" / "adapter" / "trainable.safetensors")
    assert saved and all(k.endswith(".bias") or k.startswith("classifier.") for k in saved)
    assert any(k.startswith("classifier.") and k.endswith(".weight") for k in saved)
    non_head_bias = sum(v.numel() for k, v in saved.items() if not k.startswith("classifier."))
    assert r["params"]["budget"] == non_head_bias
    assert r["params"]["trainable"] == sum(v.numel() for v in saved.values())
    assert any("LayerNorm.bias" in k for k in saved)


def test_bitfit_leaves_every_other_weight_untouched(data_dir):
    """Weights before vs after a few real optimizer steps, on the same seeded model."""
    from dora.methods import TaskInfo, build_method
    from dora.models import load_backbone

    cfg = compose("task=rte", "method=bitfit", "model=tiny_roberta")
    torch.manual_seed(0)
    bb = load_backbone(cfg.model, "seq_cls", 2)
    method = build_method(cfg.method, cfg.budget)
    model = method.apply(bb.model, TaskInfo("rte", "seq_cls", "roberta", bb.head_prefixes, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = bb.tokenizer(
        ["a first text", "another one"], ["pair", "pair two"], return_tensors="pt", padding=True
    )
    for _ in range(3):
        model(**batch, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.endswith(".bias") or k.startswith("classifier.")} - {
        "roberta.embeddings.position_ids"
    }


def test_full_fine_tuning_regression_on_bart(tmp_path, data_dir):
    r = run_inprocess(tmp_path, "task=stsb", "method=full", "model=tiny_bart", f"data_dir={data_dir}", "trainer.max_steps=4",
                      "task.splits.train=train:0:64", "task.splits.dev=dev:0:32")  # fmt: skip
    assert set(r["metrics"]) == {"dev/pearson", "dev/spearman"}
    assert r["params"]["trainable"] == r["params"]["total"]
    assert r["params"]["budget"] < r["params"]["total"]  # head excluded


def test_same_source_splits_are_recorded(tmp_path, data_dir):
    r = run_inprocess(tmp_path, "task=qqp", "method=bitfit", "model=tiny_roberta", f"data_dir={data_dir}", "trainer.max_steps=2",
                      "task.splits.train=train_sample:0:64", "task.splits.dev=train_sample:-32:")  # fmt: skip
    assert r["data"]["same_source"] == ["dev", "train"]
    assert set(r["metrics"]) == {"dev/accuracy", "dev/f1"}


def test_best_epoch_only_counts_evaluations_after_the_declared_step():
    history = [
        {"step": 10, "dev/accuracy": 90.0},
        {"step": 20, "dev/accuracy": 70.0},
        {"step": 30, "dev/accuracy": 80.0},
    ]
    assert best_entry(history, "dev/accuracy", 0)["step"] == 10
    assert best_entry(history, "dev/accuracy", 15)["step"] == 30
    assert best_entry(history, "dev/accuracy", 99)["step"] == 30  # the final evaluation always counts


def test_the_issue_command_writes_a_valid_result(tmp_path, data_dir):
    out = tmp_path / "OUT"
    proc = run_cli(
        "task=rte",
        "method=bitfit",
        "model=tiny_roberta",
        f"data_dir={data_dir}",
        "trainer.max_steps=20",
        "logger=none",
        f"output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((out / "result.json").read_text())
    assert "dev/accuracy" in r["metrics"] and r["params"]["budget"] > 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["task=mnli"], "task=mnli: missing train file"),
        (["task.splits.train=nosuch"], "missing train file"),
        (["trainer.lr=-1"], "trainer.lr=-1.0 is out of range"),
        (["trainer.batch_size=0"], "trainer.batch_size=0 is out of range"),
        (["task.splits.dev=dev:oops"], "bad split spec"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_result(tmp_path, capsys, data_dir, args, expected):
    out = tmp_path / "OUT"
    code, err = cli_inprocess(
        capsys,
        "method=bitfit",
        "model=tiny_roberta",
        f"data_dir={data_dir}",
        "logger=none",
        f"output_dir={out}",
        *args,
    )
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: ") and expected in err
    assert not (out / "result.json").exists() and not out.exists()


def test_unreachable_hub_is_one_line_with_offline_alternatives(monkeypatch):
    from dora import hub
    from dora.models import load_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    cfg = compose("task=rte", "model=roberta_base")
    with pytest.raises(UserError, match=r"Hub is unreachable.*model=minilm"):
        load_backbone(cfg.model, "seq_cls", 2)


def test_threads_explicit_or_from_omp_num_threads_else_at_most_four(monkeypatch, caplog):
    from dora.runner import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(3) == torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert set_threads(None) == torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads(None) == min(len(os.sched_getaffinity(0)), 4)
        monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
        caplog.clear()
        assert set_threads(2) == 2  # a busy machine: advice, not a different number
        assert "trainer.threads=1 is likely faster" in caplog.text
        caplog.clear()
        set_threads(1)
        assert not caplog.records
    finally:
        torch.set_num_threads(before)


def test_the_offline_hint_names_only_models_that_fit_the_task(monkeypatch):
    from dora import hub
    from dora.models import load_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match=r"Hub is unreachable.*offline alternatives: model=tiny_bart") as e:
        load_backbone(compose("task=xsum").model, "seq2seq", 0)
    assert "minilm" not in str(e.value) and "tiny_roberta" not in str(e.value)


@pytest.mark.parametrize("model", ["minilm", "tiny_roberta"])
def test_an_encoder_only_model_is_refused_for_xsum_and_leaves_no_folder(tmp_path, capsys, data_dir, model):
    out = tmp_path / "new" / "deeper" / "run"
    code, err = cli_inprocess(
        capsys,
        "task=xsum",
        "method=lora",
        f"model={model}",
        f"data_dir={data_dir}",
        "logger=none",
        f"output_dir={out}",
    )
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: model={model} is encoder-only ({'bert' if model == 'minilm' else 'roberta'}); a seq2seq task "
        "needs an encoder-decoder: model=bart_base, model=bart_large, model=tiny_bart"
    )
    assert not (tmp_path / "new").exists()  # the folders the refused run created are gone again


def test_a_run_prints_the_bar_one_line_per_evaluation_and_the_result(tmp_path, data_dir):
    """What a terminal shows (stdout and stderr in one stream): no warnings, no colour codes, and every
    evaluation line starts on a line of its own instead of being glued onto the progress bar."""
    out = tmp_path / "OUT"
    args = ["task=rte", "method=dora", "model=tiny_roberta", f"data_dir={data_dir}", "trainer.max_steps=6",
            "trainer.eval_every=3", "trainer.batch_size=8", "logger=none", f"output_dir={out}"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    shown = [line.split("\r")[-1] for line in proc.stdout.splitlines()]  # what stays visible per line
    assert "warn" not in proc.stdout.lower() and "\x1b[" not in proc.stdout, proc.stdout
    evals = [line for line in shown if "eval epoch" in line]
    assert len(evals) == 2 and all(line.startswith("[") for line in evals), shown
    assert "train: 100%" in proc.stdout  # the bar itself is there
    assert shown[-1].endswith(f"result: dev/accuracy {json.loads((out / 'result.json').read_text())['metrics']['dev/accuracy']:.2f} "
                              f"(best {json.loads((out / 'result.json').read_text())['best']['dev/accuracy']:.2f}, epoch 1) -> {out / 'result.json'}")  # fmt: skip


def test_a_pretrained_load_prints_no_report_and_names_missing_body_weights(tmp_path, capfd, caplog):
    """transformers' LOAD REPORT (ANSI table listing the new head as MISSING) is gone; weights missing
    outside the head, a real problem, still get one warning line."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    from dora.config import ModelConfig
    from dora.models import byte_level_tokenizer, load_backbone

    folder = tmp_path / "bert"
    config = BertConfig(
        vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    cfg = ModelConfig(name="local", family="bert", source="hub", path=str(folder))
    load_backbone(cfg, "seq_cls", 2)
    assert "LOAD REPORT" not in capfd.readouterr().err and not caplog.records  # only the head is new
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layer.0.output.dense.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    load_backbone(cfg, "seq_cls", 2)
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out and "\x1b[" not in captured.err
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: 1 weights outside the task head are not in the checkpoint (random init): "
        "bert.encoder.layer.0.output.dense.weight"
    ]


def test_minilm_loads_offline_from_the_pip_package():
    from dora.models import adapted_linears, load_backbone

    bb = load_backbone(compose("task=rte", "model=minilm").model, "seq_cls", 2)
    assert bb.model.config.num_hidden_layers == 6 and bb.head_prefixes == ("classifier", "bert.pooler")
    assert len(adapted_linears(bb.model, "bert")) == 36
    assert bb.tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]
