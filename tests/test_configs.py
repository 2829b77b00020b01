"""Every config group option composes; bad choices and fields fail with one line (exit 2)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from dora.argcheck import check_command_line, group_options
from dora.config import CONFIG_DIR
from dora.errors import UserError
from dora.methods import METHODS
from tasks import TASKS
from tests.helpers import REPO, cli_inprocess, compose, run_cli

TASK_NAMES, METHOD_NAMES, MODEL_NAMES = group_options("task"), group_options("method"), group_options("model")


def test_every_registered_plugin_has_a_yaml_and_back():
    assert set(METHOD_NAMES) == set(METHODS.names())
    assert set(TASK_NAMES) == set(TASKS.names())


def _check(cfg):
    """compose() resolved the config and built each group's dataclass (its __post_init__ ran), the
    plug-ins' own schemas included."""
    assert type(cfg.method) is METHODS.get(cfg.method.name).config
    assert type(cfg.task) is TASKS.get(cfg.task.name).config


@pytest.mark.parametrize("task", TASK_NAMES)
def test_each_task_composes_with_its_default_model(task):
    cfg = compose(f"task={task}")
    _check(cfg)
    assert cfg.task.name == task
    assert cfg.model.name == ("bart_base" if task == "xsum" else "roberta_base")
    assert compose(f"task={task}", "model=tiny_bart").model.name == "tiny_bart"  # model=X replaces it


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_each_model_composes(model):
    cfg = compose(f"model={model}", "task=rte")
    _check(cfg)
    assert cfg.model.name == model


def _recipe_pairs():
    """Every task with every method that has a recipe (configs/recipe/<method>.yaml)."""
    stems = [p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml")]
    return list(itertools.product([m for m in METHOD_NAMES if m in stems], TASK_NAMES))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_composes_with_both_budgets(method):
    for budget, rank in (("low", 2), ("high", 8)):
        cfg = compose(f"method={method}", f"budget={budget}", "task=rte")
        _check(cfg)
        assert (cfg.method.name, cfg.budget.rank) == (method, rank)


@pytest.mark.parametrize(
    ("method", "task"), _recipe_pairs() or [pytest.param(None, None, marks=pytest.mark.skip)]
)
def test_every_recipe_composes_and_the_command_line_wins(method, task):
    cfg = compose(f"method={method}", f"task={task}")
    _check(cfg)
    assert compose(f"method={method}", f"task={task}", "trainer.lr=0.123").trainer.lr == 0.123


def test_debug_tiny_is_the_tiny_offline_run_and_the_command_line_wins():
    plain = ("task=rte", "method=dora", "output_dir=out")
    tiny = compose(*plain, "debug=tiny")
    spelled_out = compose(*plain, "model=tiny_roberta", "logger=none", "trainer.progress=false")
    assert tiny.resolved == spelled_out.resolved
    xsum = compose("task=xsum", "debug=tiny", "model=tiny_bart", "logger=wandb")
    assert (xsum.model.name, xsum.logger.kind, xsum.trainer.progress) == ("tiny_bart", "wandb", False)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_full_cross_product_composes(task):
    for method, model in itertools.product(METHOD_NAMES, MODEL_NAMES):
        _check(compose(f"task={task}", f"method={method}", f"model={model}"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["task=nosuch"], "unknown task 'nosuch'; valid: cola,"),
        (["method=nosuch"], "unknown method 'nosuch'; valid: adalora, bitfit,"),
        (["model=gpt9"], "unknown model 'gpt9'; valid: bart_base,"),
        (["budget=medium"], "unknown budget 'medium'; valid: high, low"),
        (["debug=huge"], "unknown debug 'huge'; valid: tiny"),
        (["-m", "task=rte,nosuch"], "unknown task 'nosuch'"),
        (["trainer.nosuch=1"], "unknown field 'trainer.nosuch'; valid: trainer.batch_size,"),
        (["trainer.epochs=many"], "bad value for trainer.epochs"),
        (["nosuch=1"], "unknown field 'nosuch'; valid: budget, data_dir,"),
    ],
)
def test_bad_command_lines_fail_with_one_line(capsys, args, expected):
    code, err = cli_inprocess(capsys, *args, "logger=none")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


QUICK = [
    ["task=nosuch"],
    ["-m", "method=lora,nosuch"],
    ["experiment=nosuch"],
    ["nosuch=1"],
    ["trainer.nosuch=1"],
    ["logger.nosuch=1"],
    ["trainer.epochs=many"],
    ["trainer.lr=-1"],
    ["trainer.batch_size=0"],
    ["trainer.threads=0"],
    ["trainer.mixed_precision=fp8"],
    ["logger.mode=sometimes"],
    ["model.source=ftp"],
    ["budget.rank=0"],
]


@pytest.mark.parametrize("args", QUICK, ids=lambda a: a[-1])
def test_the_torch_free_check_says_what_preflight_says(capsys, args):
    """run.py checks these before importing torch; the line is the one the full preflight prints."""
    with pytest.raises(UserError) as quick:
        check_command_line(args)
    code, err = cli_inprocess(capsys, *args, "logger=none")
    assert code == 2 and err.strip() == f"error: {quick.value}"


@pytest.mark.parametrize(
    "args",
    [
        ["task=sst2", "method=dora", "model=minilm", "budget=high", "seed=3", "trainer.lr=null"],
        ["-m", "task=rte,mrpc", "method=lora,adalora,dora", "seed=range(1,3)", "hydra/launcher=local"],
        ["experiment=mini_dora", "trainer.epochs=2", "logger.tags=[a,b]", "model.tiny.hidden_size=8"],
        ["method.init_ratio=0.5", "task.splits.dev=dev:0:5", "+nosuch=1", "~trainer.lr", "data_dir=x"],
    ],
)
def test_the_torch_free_check_lets_good_command_lines_through(args):
    check_command_line(args)  # method.* / task.* and +/~ overrides are preflight's to judge


def test_a_typo_is_answered_before_torch_is_imported():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['run.py', 'task=nosuch']\n"
        "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print(e.code)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["2", "[]"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: unknown task 'nosuch'")


def test_the_real_cli_refuses_an_unknown_task():
    proc = run_cli("task=nosuch")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown task 'nosuch'; valid: " + ", ".join(TASK_NAMES)
