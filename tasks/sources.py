"""Where the non-GLUE tasks read from: a hub split, or local files (``<data_dir>/squad/*.json``,
``<data_dir>/xsum/*.jsonl``) with an offline fallback for data folders that hold no training file.

shared/data has no SQuAD or XSum training split. A task may declare ``local_fallback`` splits that carve
train and evaluation out of one local file (e.g. ``dev-v1.1::80%`` / ``dev-v1.1:80%:``); they replace the
configured splits only when all of these hold:
  * the configured train file is missing from the data folder,
  * the configured splits and the fallback name the same canonical splits,
  * every configured evaluation split is a whole file (no slice) that is either missing too or is the
    very file the fallback carves from.
Anything else (a sliced or different existing evaluation file) is left as the user wrote it and a missing
file is an error. The fallback is announced, and the result records it: train and evaluation then come
from one original split and are not comparable with official numbers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from dora import hub
from dora.errors import UserError
from tasks.base import Task
from tasks.data import parse_split

log = logging.getLogger(__name__)


def hub_split(hub_id: str, split: str, layout: str):
    """``datasets.load_dataset(hub_id, split=split)``, or one error line naming the offline alternative
    (``layout``: where the local files go, e.g. ``squad/<split>.json``)."""
    from datasets import load_dataset

    hint = f"offline: pass data_dir=PATH (a folder laid out like shared/data: {layout})"
    if not hub.offline_env() and not hub.reachable():
        raise UserError(f"cannot load {hub_id}: the Hugging Face Hub is unreachable; {hint}")
    try:
        return load_dataset(hub_id, split=split)
    except Exception as e:  # network, offline mode, unknown split: all end the run the same way
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot load {hub_id} split {split!r} ({type(e).__name__}: {first}); {hint}") from e


@dataclass(frozen=True)
class LocalFiles:
    """Split name -> ``<data_dir>/<folder>/<name><ext>``."""

    data_dir: str
    folder: str  # squad | xsum
    ext: str  # .json | .jsonl

    def path(self, split_name: str) -> str:
        return os.path.join(self.data_dir, self.folder, split_name + self.ext)

    def exists(self, spec: str) -> bool:
        return os.path.isfile(self.path(parse_split(spec).name))

    def available(self) -> list[str]:
        folder = os.path.join(self.data_dir, self.folder)
        if not os.path.isdir(folder):
            return []
        return sorted(f[: -len(self.ext)] for f in os.listdir(folder) if f.endswith(self.ext))


def resolve_splits(
    task: str, files: LocalFiles, splits: dict[str, str], fallback: dict[str, str]
) -> tuple[dict[str, str], str | None]:
    """The splits to read and, when the fallback replaced them, a sentence saying so."""
    note = None
    if _fallback_applies(files, splits, fallback):
        note = (
            f"no {files.path(parse_split(splits['train']).name)}: using task.local_fallback "
            f"{dict(fallback)} (train and evaluation carved out of one original split; "
            "not comparable with official numbers)"
        )
        log.warning("task=%s: %s", task, note)
        splits = dict(fallback)
    for canonical, spec in splits.items():
        if not files.exists(spec):
            raise UserError(_missing(task, files, canonical, spec, fallback))
    return splits, note


def _fallback_applies(files: LocalFiles, splits: dict[str, str], fallback: dict[str, str]) -> bool:
    if not fallback or files.exists(splits["train"]) or set(splits) != set(fallback):
        return False
    for canonical, spec in splits.items():
        if canonical == "train":
            continue
        mine, source = parse_split(spec), parse_split(fallback[canonical])
        if mine.sliced or (files.exists(spec) and mine.name != source.name):
            return False
    return all(files.exists(spec) for spec in fallback.values())


def _missing(task: str, files: LocalFiles, canonical: str, spec: str, fallback: dict[str, str]) -> str:
    have = files.available()
    where = f"files there: {', '.join(have)}" if have else f"no {files.ext} files there"
    example = " ".join(f"task.splits.{c}={s}" for c, s in fallback.items()) or f"task.splits.{canonical}=NAME"
    return f"task={task}: missing {canonical} file {files.path(parse_split(spec).name)}; {where} (e.g. {example})"


class LocalFileTask(Task):
    """A task whose local data is ``<data_dir>/<local_folder>/<split><local_ext>`` with an optional
    ``task.local_fallback`` (train and evaluation carved out of one file when there is no train file)."""

    local_folder = ""
    local_ext = ""

    def __init__(self, cfg, data_dir):
        super().__init__(cfg, data_dir)
        self.fallback_note: str | None = None

    def local_files(self) -> LocalFiles:
        return LocalFiles(self.data_dir, self.local_folder, self.local_ext)

    def check_data(self) -> None:
        if self.data_dir is None or self.fallback_note is not None:
            return
        self.splits, self.fallback_note = resolve_splits(
            self.cfg.name, self.local_files(), dict(self.cfg.splits), dict(self.cfg.local_fallback)
        )

    def data_notes(self) -> dict:
        notes = super().data_notes()
        if self.fallback_note:
            notes["fallback"] = self.fallback_note
        return notes
