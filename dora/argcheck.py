"""The command-line checks that need no torch: run first, so a typo answers in about a second.

``run.py`` calls ``check_command_line`` before anything imports torch, transformers or peft (10-20 s
on a busy CPU). It knows what the YAML files and the core schemas of ``dora.config`` say:
  * every group choice, each value of a sweep (``task=nosuch``, ``method=lora,nosuch``);
  * unknown top-level keys (``nosuch=1``) and unknown fields of trainer, logger, model and budget;
  * values of the wrong type or out of range for those fields (``trainer.epochs=many``, ``trainer.lr=-1``).
Method and task fields belong to plug-in schemas that live next to torch code; ``dora.cli.preflight``
checks those, and everything else, right after. The messages are the ones preflight prints.
"""

from __future__ import annotations

import dataclasses
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dora.config import CONFIG_DIR, GROUPS, BudgetConfig, LoggerConfig, ModelConfig, TrainerConfig
from dora.errors import UserError, choices, one_line

SCHEMAS = {"trainer": TrainerConfig, "logger": LoggerConfig, "model": ModelConfig, "budget": BudgetConfig}
# groups whose values land at the top level, not under a key
MERGED_AT_ROOT = ("recipe", "experiment", "debug")


def group_options(group: str) -> list[str]:
    """User-facing choices of a config group: its YAML files, minus internal ones (``_*``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def top_level_keys() -> list[str]:
    """Keys of the composed config: the groups that get a key of their own and the primary YAML's."""
    primary = OmegaConf.load(CONFIG_DIR / "config.yaml")
    own = [k for k in primary if k not in ("defaults", "hydra")]
    return sorted({g for g in GROUPS if g not in MERGED_AT_ROOT} | set(own))


def check_command_line(argv: list[str]) -> None:
    """Raise UserError for the first problem these checks can see; say nothing otherwise."""
    args = [a for a in argv if not a.startswith("-") and not a.startswith("hydra")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        raise UserError(f"cannot parse the command line: {str(e).splitlines()[0]}") from None
    for o in overrides:
        if o.type != OverrideType.CHANGE:  # +key, ++key, ~key: Hydra's own rules, checked by preflight
            continue
        key, values = o.key_or_group, _values(o)
        if key in GROUPS:
            for v in values:
                if v not in group_options(key) and not (key == "experiment" and v in ("null", None)):
                    raise UserError(f"unknown {key} {v!r}; valid: {choices(group_options(key))}")
        elif "." not in key and key not in top_level_keys():
            raise UserError(f"unknown field {key!r}; valid: {choices(top_level_keys())}")
        elif key.split(".")[0] in SCHEMAS:
            for v in values:
                _check_field(key, v)


def _values(override) -> list:
    """The override's values, typed as Hydra parses them (``1`` is an int, ``null`` is None)."""
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except Exception:  # interval/glob sweeps: nothing to enumerate, Hydra checks them itself
        return []


def _check_field(key: str, value) -> None:
    """``group.field=value`` against the group's schema: the field exists, the type fits, the range too."""
    group, field, *_ = key.split(".")
    schema = SCHEMAS[group]
    names = [f.name for f in dataclasses.fields(schema)]
    if field not in names:
        raise UserError(f"unknown field {key!r}; valid: {choices(f'{group}.{n}' for n in names)}")
    if key != f"{group}.{field}":  # a nested key (model.tiny.hidden_size): the dict's own business
        return
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), {field: value})
    except OmegaConfBaseException as e:
        raise UserError(f"bad value for {key}: {str(e).splitlines()[0]}") from None
    # the schema's own range check, with only this field changed; a complaint about another field (an
    # unset default, or a rule involving several) is left to preflight, which sees the whole config
    values = OmegaConf.to_container(typed, throw_on_missing=False)
    try:
        schema(**values)
    except (ValueError, TypeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(f"{key}="):
            raise UserError(str(e)) from None


def check_or_exit(argv: list[str]) -> None:
    """``check_command_line``, printing ``error: ...`` and exiting 2 as ``dora.cli.fail`` does."""
    try:
        check_command_line(argv)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
