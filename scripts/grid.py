"""Run the grid behind a paper table or sweep: expand it, skip finished runs, launch it via Hydra multirun.

    python scripts/grid.py table2 [--runs runs/paper] [--dry-run] [--jobs N] [--launcher L] [-- OVERRIDES...]

A target names one or more experiment files (configs/experiment/*.yaml) whose grids are declared under
``hydra.sweeper.params``. Each run's folder is ``<runs>/<hydra.job.override_dirname>`` (for example
``runs/paper/budget=high,method=dora,seed=1,task=cola``), computed here by Hydra's rule (a test holds it to
the name Hydra composes), so the plan and the launched jobs agree, and runs shared by two tables (Table 5
"with DEM" is Table 2's DynDoRA 1.33M row) have one folder. A run whose ``result.json`` exists is skipped, here and again in the job
itself (scripts/grid_job.py), so an interrupted grid resumes where it stopped. The experiment's params
are passed on the command line too (command-line overrides of the same key win, as in Hydra).

``--dry-run`` lists the runs still to do, their count and a rough cost (from each run's settings as Hydra
composes them), and needs no launcher plugin.
Launchers: ``basic`` (sequential), ``joblib`` (local processes; one GPU per run, assigned by the job),
``submitit_slurm`` / ``submitit_local`` (pass ``hydra.launcher.*`` settings after ``--``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dora.cli import compose_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# make target -> experiment files; a paper table whose rows are not one cartesian product is split in two
TARGETS = {
    "table2": ("table2_peft", "table2_ref"),
    "table3": ("table3_peft", "table3_ref"),
    "table4": ("table4_peft", "table4_ref"),
    "table5": ("table5", "table5_dem"),
    "table6": ("table6", "table6_default"),
    "fig2": ("fig2", "fig2_table2"),
    "sweep-budget": ("sweep_budget",),
    "sweep-dem": ("sweep_dem",),
    # the MiniLM mini-reproduction (README "Mini-reproduction on MiniLM")
    "mini": ("mini_dora", "mini_adalora", "mini_lora", "mini_bitfit", "mini_full"),
    # the MiniLM study (README "Does dynamic rank allocation help?"), stage 1: the precondition
    "study1": ("study1_lora", "study1_dora"),
    "study3": ("study3_lora", "study3_adalora", "study3_dora", "study3_dora_noprune"),
}
# every experiment file is a target of its own too (files starting with "_" are shared parts, not grids)
for _f in sorted((CONFIGS / "experiment").glob("[!_]*.yaml")):
    TARGETS.setdefault(_f.stem, (_f.stem,))
# Left out of run folder names: the experiment (so tables share runs) and keys that do not change results
# Run-folder names leave out the same keys as a plain `python run.py -m` (configs/config.yaml)
OVERRIDE_DIRNAME = OmegaConf.load(CONFIGS / "config.yaml").hydra.job.config.override_dirname
EXCLUDE_KEYS = tuple(OVERRIDE_DIRNAME.exclude_keys)

# Cost model, deliberately rough: training tokens (batch x padded length x steps) at a throughput per
# backbone measured-order-of-magnitude for one A100-class GPU in bf16; evaluation time is not counted.
TOKENS_PER_S = {
    "roberta_base": 40_000,
    "roberta_large": 13_000,
    "bart_base": 30_000,
    "bart_large": 10_000,
    "minilm": 150_000,
    "tiny_roberta": 1_000_000,
    "tiny_bart": 1_000_000,
}
# training examples: GLUE from the paper's Table 7; SQuAD v1.1 / v2.0 and XSum train split sizes
# CPU grids (the MiniLM mini-reproduction): run-seconds on the CPU, calibrated on `make mini-table` on this
# project's 2-core AMD EPYC, one thread per run, two runs at once: 21,300 optimizer steps x 16 x 128
# padded tokens = 43.6M tokens in 4.24 run-hours (15,264 s), setup and evaluation included.
CPU_TOKENS_PER_S = {"minilm": 2_860}
CPU_GRIDS = ("mini", "study")  # targets (and their experiment files) meant for the CPU: MiniLM grids
NON_GLUE_TRAIN = {"squad_v1": 87_599, "squad_v2": 130_319, "xsum": 204_045}
GLUE_CORPUS = {"RTE": "rte", "MRPC": "mrpc", "STS-B": "stsb", "CoLA": "cola", "SST-2": "sst2"}
GLUE_CORPUS |= {"QNLI": "qnli", "QQP": "qqp", "MNLI": "mnli"}


@dataclass
class Run:
    experiment: str
    overrides: list[str]  # the job's command-line overrides, as Hydra's sweeper builds them
    folder: Path
    done: bool
    cost_s: float  # rough seconds: GPU seconds, or CPU run-seconds for a CPU grid


# -- expanding a grid ---------------------------------------------------------------------------------
def sweep_params(experiment: str) -> list[str]:
    """The experiment's ``hydra.sweeper.params`` as override strings (``key=v1,v2``)."""
    path = CONFIGS / "experiment" / f"{experiment}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"error: unknown experiment {experiment!r}; valid: {', '.join(known)}")
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params") or {}
    return [f"{k}={v}" for k, v in params.items()]


def grid_args(experiment: str, extra: list[str]) -> list[str]:
    """The experiment's sweep params, each replaced by a command-line override of the same key, as
    Hydra's sweeper does. grid.py passes them all on the command line: Hydra composes the command line
    once before sweeping, and a single-valued ``method.dem_coef=0`` only composes with ``method=dora``
    beside it (a key of DynDoRA's schema)."""
    merged = {o.split("=", 1)[0]: o for o in sweep_params(experiment)}
    merged |= {o.split("=", 1)[0]: o for o in extra}
    return [f"experiment={experiment}", *merged.values()]


def job_overrides(experiment: str, extra: list[str]) -> list[list[str]]:
    """Every job of the experiment, as Hydra's basic sweeper forms them: the cartesian product of the
    swept values (the first key varies slowest), each job a list of ``key=value`` overrides."""
    parsed = OverridesParser.create().parse_overrides(grid_args(experiment, extra))
    axes = [[f"{o.get_key_element()}={v}" for v in _values(o)] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


def _values(override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def run_folder(runs: Path, overrides: list[str]) -> Path:
    """``<runs>/<hydra.job.override_dirname>``: the job's overrides sorted, the excluded keys left out,
    joined with the separators of configs/config.yaml (Hydra's rule; tests/test_tables.py holds it to the
    name Hydra composes, without composing every run here)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    lines = sorted(o.input_line for o in parsed if o.key_or_group not in EXCLUDE_KEYS)
    return runs / OVERRIDE_DIRNAME.item_sep.join(lines).replace("=", OVERRIDE_DIRNAME.kv_sep)


def _split(extra: list[str]) -> tuple[list[str], list[str]]:
    """(job overrides, Hydra's own settings such as hydra.launcher.* which name no run)."""
    hydra_own = [o for o in extra if o.startswith("hydra")]
    return [o for o in extra if o not in hydra_own], hydra_own


def plan(target: str, runs: Path, extra: list[str]) -> list[Run]:
    """The runs of a target, one per folder (a folder two experiments share is listed once)."""
    if target not in TARGETS:
        raise SystemExit(f"error: unknown target {target!r}; valid: {', '.join(TARGETS)}")
    job_extra, _ = _split(extra)
    out: dict[Path, Run] = {}
    for experiment in TARGETS[target]:
        for overrides in job_overrides(experiment, job_extra):
            folder = run_folder(runs, overrides)
            if folder not in out:
                done = (folder / "result.json").exists()
                cost = estimate_seconds(overrides, device_of(target))
                out[folder] = Run(experiment, overrides, folder, done, cost)
    return list(out.values())


# -- cost estimate -------------------------------------------------------------------------------------
@functools.cache
def _train_examples(task: str) -> int:
    with open(REPO / "results" / "paper" / "table7.csv") as f:
        glue = {GLUE_CORPUS[row["corpus"]]: int(row["train"]) for row in csv.DictReader(f)}
    return (glue | NON_GLUE_TRAIN).get(task, 10_000)


@functools.cache
def _settings(overrides: tuple[str, ...]) -> tuple[str, str, int, int, int, int]:
    """(task, model, batch size, epochs, max length, max steps) as the run composes them. Only these
    fields are resolved (a study's ``${tuned:}`` learning rate need not exist for a dry run)."""
    cfg = compose_config(list(overrides))
    t = cfg.trainer
    length = t.max_length or cfg.task.max_length
    return cfg.task.name, cfg.model.name, t.batch_size, t.epochs, length, t.max_steps


def device_of(target: str) -> str:
    """``cpu`` for the grids meant for the CPU (their costs are CPU run-hours), ``gpu`` otherwise."""
    return "cpu" if target.startswith(CPU_GRIDS) else "gpu"


def estimate_seconds(overrides: list[str], device: str = "gpu") -> float:
    """Rough seconds of one run on ``device``: steps x batch x padded length / backbone throughput."""
    unseeded = tuple(o for o in overrides if not o.startswith("seed="))  # the seed changes no setting
    task, model, batch, epochs, length, steps = _settings(unseeded)
    if steps <= 0:
        steps = math.ceil(_train_examples(task) / batch) * epochs
    if device == "cpu":
        return steps * batch * length / CPU_TOKENS_PER_S.get(model, CPU_TOKENS_PER_S["minilm"])
    return steps * batch * length / TOKENS_PER_S.get(model, 40_000)


# -- launching -----------------------------------------------------------------------------------------
def launcher_overrides(launcher: str, jobs: int) -> list[str]:
    """Hydra overrides choosing the launcher; ``auto`` = joblib for parallel runs, basic otherwise."""
    if launcher == "auto":
        launcher = "joblib" if jobs > 1 else "basic"
    if launcher == "joblib":
        try:
            import hydra_plugins.hydra_joblib_launcher  # noqa: F401
        except ImportError:
            raise SystemExit(
                "error: the joblib launcher is not installed; pip install hydra-joblib-launcher, "
                "or run one at a time with JOBS=1"
            ) from None
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return [] if launcher == "basic" else [f"hydra/launcher={launcher}"]


def job_env(environ, jobs: int, per_gpu: int) -> dict[str, str]:
    """The runs' environment. With several runs at once, each gets its share of the CPU cores as
    OMP_NUM_THREADS (which trainer.threads=null follows), unless the caller set it already."""
    env = {**environ, "DORA_RUNS_PER_GPU": str(per_gpu)}
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def launch(target: str, runs: Path, extra: list[str], launcher: str, jobs: int, per_gpu: int) -> int:
    """One Hydra multirun per experiment file; finished runs return at once inside the job."""
    exclude = f"hydra.job.config.override_dirname.exclude_keys=[{','.join(EXCLUDE_KEYS)}]"
    env = job_env(os.environ, jobs, per_gpu)
    job_extra, hydra_extra = _split(extra)
    rc = 0
    for experiment in TARGETS[target]:
        cmd = [sys.executable, str(REPO / "scripts" / "grid_job.py"), "-m", *grid_args(experiment, job_extra)]
        cmd += [
            *hydra_extra,
            f"hydra.sweep.dir={runs.resolve()}",
            exclude,
            *launcher_overrides(launcher, jobs),
        ]
        print("+", " ".join(cmd), flush=True)
        rc = rc or subprocess.run(cmd, cwd=REPO, env=env).returncode
    return rc


# -- command line --------------------------------------------------------------------------------------
def report(target: str, runs: list[Run]) -> None:
    todo = [r for r in runs if not r.done]
    cpu = device_of(target) == "cpu"
    unit = "CPU run-h" if cpu else "GPU-h"
    for r in todo:
        print(f"  {r.folder}  [{r.experiment}, ~{r.cost_s / 3600:.2f} {unit}]")
    hours = sum(r.cost_s for r in todo) / 3600
    basis = (
        f"CPU run-hours (rough: ~{CPU_TOKENS_PER_S['minilm']:,} padded tokens/s for MiniLM with one thread "
        "per run, measured on a 2-core CPU, setup and evaluation included; N runs at once on N cores take about 1/N of it in wall-clock time)"
        if cpu
        else f"GPU-hours (rough: A100-class GPU, ~{TOKENS_PER_S['roberta_base']:,} tokens/s for roberta-base, "
        "padded length, evaluation not counted)"
    )
    print(
        f"{target}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run; about {hours:,.1f} {basis}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=list(TARGETS))
    p.add_argument("--runs", type=Path, default=Path("runs/paper"), help="folder of run folders")
    p.add_argument("--dry-run", action="store_true", help="list the runs to do; launch nothing")
    p.add_argument("--launcher", default="auto", help="auto | basic | joblib | submitit_slurm | ...")
    p.add_argument("--jobs", type=int, default=0, help="concurrent runs (0: GPUs x per-gpu, or 1)")
    p.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU")
    argv = sys.argv[1:] if argv is None else argv
    # everything after "--" is Hydra overrides for every run (argparse mishandles them as positionals)
    cut = argv.index("--") if "--" in argv else len(argv)
    a, overrides = p.parse_args(argv[:cut]), argv[cut + 1 :]
    runs = plan(a.target, a.runs, overrides)
    report(a.target, runs)
    if a.dry_run or all(r.done for r in runs):
        return 0
    jobs = a.jobs
    if not jobs:
        from grid_job import visible_gpus  # imports the harness (torch): only when launching

        jobs = max(1, len(visible_gpus()) * a.per_gpu)
    return launch(a.target, a.runs, overrides, a.launcher, jobs, a.per_gpu)


if __name__ == "__main__":
    sys.exit(main())
