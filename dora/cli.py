"""Command-line glue around Hydra: one clear error line for bad input, exit code 2.

Hydra's own composition errors span several lines and a stack-trace hint; ``preflight`` composes the
command line once before Hydra does and turns any problem into ``error: <what> ; valid: <choices>``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

import dora.methods  # noqa: F401  (the plug-ins register themselves, their config schemas included)
import tasks  # noqa: F401
from dora import rundir
from dora.argcheck import group_options
from dora.config import CONFIG_DIR, GROUPS, RunConfig, register_resolvers
from dora.errors import UserError, choices, one_line
from dora.registry import store_schemas_in_hydra
from dora.rundir import check_output_dir

log = logging.getLogger(__name__)

# Hydra composes in this process from here on (run.py, scripts/grid_job.py and the tests import this
# module first): the schemas announced before Hydra was imported, and the resolvers the YAMLs use.
store_schemas_in_hydra()
register_resolvers()


def fail(message: str, code: int = 2):
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config ``python run.py OVERRIDES`` composes (with Hydra's own ``hydra`` node if asked)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


def _prefix(kind: OverrideType) -> str:
    return {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(kind, "")


def _values(override) -> list[str]:
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # interval/glob sweeps: nothing to enumerate, Hydra checks them itself
        return []


# The topmost folder above a single run's output_dir that did not exist before the run (Hydra creates
# it): a refused run removes it again when it is empty, so `runs/<task>/<method>/<model>/` is not left.
_NEW_PARENT: Path | None = None


def _first_missing(path: Path) -> Path | None:
    top = None
    while not path.exists():
        top, path = path, path.parent
    return top


def preflight(argv: list[str]) -> None:
    """Validate every group choice (each value of a sweep) and compose the first combination."""
    args = [a for a in argv if not a.startswith("-") and not a.startswith("hydra")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        fail(f"cannot parse the command line: {str(e).splitlines()[0]}")
    first = []
    for o in overrides:
        key, values = o.key_or_group, _values(o)
        if key in GROUPS:
            for v in values:
                if v not in group_options(key) and not (key == "experiment" and v == "null"):
                    fail(f"unknown {key} {v!r}; valid: {choices(group_options(key))}")
        if o.type != OverrideType.DEL and values:
            first.append(f"{_prefix(o.type)}{key}={values[0]}")
    cfg = checked_config(first)
    global _NEW_PARENT
    _NEW_PARENT = None
    if multirun(argv):
        check_sweep(overrides, first)
    else:
        # before check_single_run: claiming the folder creates its parents
        _NEW_PARENT = _first_missing(Path(cfg.output_dir or ".").absolute().parent)
        check_single_run(cfg, explicit_output=any(o.key_or_group == "output_dir" for o in overrides))


def checked_config(overrides: list[str], label: str = "") -> RunConfig:
    """Compose, resolve and convert one combination (the dataclasses' ``__post_init__`` check it), or fail."""
    try:
        return RunConfig.from_hydra(compose_config(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        fail(label + explain(e, overrides))
    except UserError as e:
        fail(label + str(e))


SWEEP_PRODUCT_LIMIT = (
    16  # combinations composed one by one before the first job (~0.1 s each); beyond, each value
)


def check_sweep(overrides, first: list[str]) -> None:
    """Validate a sweep before its first job: every combination when there are few, else every swept
    value on top of the first combination. A bad value later in the grid then stops nothing midway."""
    swept = [(i, o) for i, o in enumerate(overrides) if o.is_sweep_override() and len(_values(o)) > 1]
    if not swept:
        return
    keys = [f"{_prefix(overrides[i].type)}{overrides[i].key_or_group}" for i, _ in swept]
    values = [_values(o) for _, o in swept]
    if math.prod(len(v) for v in values) <= SWEEP_PRODUCT_LIMIT:
        combos = list(itertools.product(*values))
    else:
        combos = [tuple(vs[0] for vs in values)]
        combos += [
            tuple(v if j == k else vs[0] for j, vs in enumerate(values))
            for k in range(len(values))
            for v in values[k][1:]
        ]
    base = [f for f in first if f.split("=", 1)[0] not in keys]
    for combo in combos[1:]:  # the first combination is checked already
        chosen = [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
        checked_config(base + chosen, label=f"sweep combination {' '.join(chosen)}: nothing was run: ")


def multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)


def check_single_run(cfg: RunConfig, explicit_output: bool) -> None:
    """Before Hydra creates the run folder: it must be creatable, and every process of a multi-process
    launch (torchrun, accelerate launch) must name the same one (the default holds a timestamp)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not explicit_output:
        fail(
            "a multi-process run needs output_dir=PATH (the default folder name holds a per-process timestamp)"
        )
    try:
        check_output_dir(cfg.output_dir)
        if explicit_output and int(os.environ.get("RANK", "0")) == 0:
            # lock first, then look: a refused process writes nothing (Hydra's .hydra/ and run.log
            # come after this), and what the folder holds is judged under the lock
            rundir.claim(cfg.output_dir)
            check_folder(Path(cfg.output_dir or "."), cfg)
    except UserError as e:
        if cfg.output_dir is not None:
            rundir.release(cfg.output_dir)
        fail(str(e))


def check_folder(out_dir: Path, cfg: RunConfig) -> None:
    """Refuse, before Hydra overwrites its .hydra/ files, a folder holding another configuration's run."""
    from dora import checkpoint

    rundir.completed(out_dir, cfg)
    newest = checkpoint.latest(out_dir / "checkpoints")
    if newest is not None:
        try:
            old = checkpoint.read_json(newest / "state.json")["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # damaged: the run's resume verifies it and falls back
        rundir.refuse_other_config(out_dir, f"checkpoint {newest.name}", old, cfg.as_dict())


def process_overrides() -> list[str]:
    """Hydra overrides for processes other than rank 0 of a multi-process launch: they write no
    .hydra/ folder and no run.log; rank 0 alone writes logs and results."""
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def explain(error: Exception, overrides: list[str]) -> str:
    """One line for a composition error: which key or value, and what is valid there."""
    text = str(error)
    if isinstance(error, InterpolationResolutionError):
        return f"bad value for {error.full_key}: {text.splitlines()[0].split('interpolation: ', 1)[-1]}"
    if isinstance(error, MissingConfigException):
        return text.splitlines()[0]
    m = re.search(r"Error merging override ([^=]+)=", text)
    if m and error.__cause__ is not None:
        return f"bad value for {m.group(1)}: {str(error.__cause__).splitlines()[0]}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        cause = error.__cause__
        if cause is not None and "not in" not in str(cause) and "not found" not in str(cause).lower():
            return f"bad value for {key}: {str(cause).splitlines()[0]}"
        return f"unknown field {key!r}; valid: {choices(_siblings(key, overrides))}"
    lines = text.splitlines()
    if lines[0].endswith(":") and len(lines) > 1:  # "In 'x': ... while composing config:" + the reason
        return f"{lines[0]} {lines[1].strip()}"
    return lines[0]


def _siblings(key: str, overrides: list[str]) -> list[str]:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    rest = [o for o in overrides if not o.lstrip("+").startswith(key + "=")]
    cfg = compose_config(rest)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    prefix = f"{parent}." if parent else ""
    return [f"{prefix}{k}" for k in node] if isinstance(node, DictConfig) else []


def run_job(cfg: DictConfig, out_dir: str) -> None:
    """Hydra task body: convert the composed config and run; on bad input print one line, remove the
    folder if this process created it, exit 2. In a sweep a refused job prints its line and the sweep
    goes on (listed at the end)."""
    from dora.runner import run

    claim = rundir.claimed(out_dir)
    try:
        result = run(RunConfig.from_hydra(cfg), out_dir)
    except UserError as e:
        if claim is not None and claim.created:  # only what this very process made, never a used folder
            _remove_partial(Path(out_dir))
        _refused(str(e), out_dir)
        return
    except KeyboardInterrupt:
        fail(f"interrupted; re-run the same command with output_dir={out_dir} to resume", code=130)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        fail(f"cannot write to {e.filename or out_dir}: {e.strerror}; free space and re-run the same "
             f"command with output_dir={out_dir} to resume")  # fmt: skip
    finally:
        rundir.release(out_dir)
    if result:  # rank 0: the run's last terminal line
        log.info("result: %s -> %s", summary(result), Path(out_dir) / "result.json")


def summary(result: dict) -> str:
    """``dev/accuracy 81.20 (best 82.00, epoch 1)``: the headline metric, last and best."""
    key = result["headline"]
    return f"{key} {result['metrics'][key]:.2f} (best {result['best'][key]:.2f}, epoch {result['best']['epoch']})"


SWEEP_FAILURES: list[str] = []  # this process's refused sweep jobs, listed when the sweep ends


def _refused(message: str, out_dir: str) -> None:
    if not _in_sweep():
        fail(message)
    print(f"error: {one_line(message)} (sweep job {out_dir}; the sweep goes on)", file=sys.stderr)
    SWEEP_FAILURES.append(f"{out_dir}: {one_line(message)}")


def _in_sweep() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra job (tests call run_job directly)
        return False


def report_sweep() -> None:
    """After a sweep: one line listing the refused jobs, exit 2; nothing when all ran."""
    if SWEEP_FAILURES:
        fail(f"{len(SWEEP_FAILURES)} sweep job(s) refused: " + "; ".join(SWEEP_FAILURES))


def _remove_partial(out_dir: Path) -> None:
    """Remove a run folder this process created that holds only Hydra's bookkeeping and the lock."""
    ours = {".hydra", "run.log", "config.yaml", "adapter", "wandb", "wandb_run_id", ".lock"}
    if out_dir.is_dir() and all(p.name in ours for p in out_dir.iterdir()):
        shutil.rmtree(out_dir, ignore_errors=True)
    top = _NEW_PARENT
    parent = out_dir.absolute().parent
    while top is not None and parent.is_relative_to(top):
        try:
            parent.rmdir()  # only when empty: another run may have put its folder there meanwhile
        except OSError:
            break
        parent = parent.parent
