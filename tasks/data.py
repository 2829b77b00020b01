"""Split specifications shared by every task: ``name``, ``name:start:end`` or ``name[start:end]``
with row counts or percentages, e.g. ``train``, ``dev``, ``train_sample::90%``, ``train:0:2000``.
``name[start:end]`` is the syntax of ``datasets`` split slicing (a hub split takes the same spec);
on the Hydra command line it needs quotes, ``name:start:end`` does not:
``task.splits.train=train_sample::90% task.splits.dev=train_sample:90%:``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dora.errors import UserError

_BOUND = r"-?\d+%?"
_SPEC = re.compile(
    rf"^(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<s1>{_BOUND})?:(?P<e1>{_BOUND})?\]|:(?P<s2>{_BOUND})?:(?P<e2>{_BOUND})?)?$"
)


@dataclass(frozen=True)
class SplitSpec:
    name: str  # file stem / hub split name
    start: str | None = None
    end: str | None = None

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.end is not None

    def slice_suffix(self) -> str:
        return f"[{self.start or ''}:{self.end or ''}]" if self.sliced else ""

    def bounds(self, n: int) -> tuple[int, int]:
        """Row range [lo, hi) of this slice in a split of n rows."""

        def pos(v: str | None, default: int) -> int:
            if v is None:
                return default
            i = n * int(v[:-1]) // 100 if v.endswith("%") else int(v)
            return max(0, min(n, i + n if i < 0 else i))

        return pos(self.start, 0), pos(self.end, n)


def parse_split(spec: str) -> SplitSpec:
    m = _SPEC.match(str(spec).strip())
    if not m:
        raise UserError(
            f"bad split spec {spec!r}; expected NAME, NAME:START:END or NAME[START:END], e.g. train::90% or dev:0:500"
        )
    return SplitSpec(m["name"], m["s1"] or m["s2"], m["e1"] or m["e2"])


def shared_sources(splits: dict[str, str]) -> list[str]:
    """Canonical splits that read from the same original split (e.g. train and dev both carved out of
    train_sample); such evaluations are not comparable with official dev numbers."""
    by_source: dict[str, list[str]] = {}
    for canonical, spec in splits.items():
        by_source.setdefault(parse_split(spec).name, []).append(canonical)
    return sorted(c for group in by_source.values() if len(group) > 1 for c in group)
