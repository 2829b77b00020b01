"""The comments' references resolve inside the repository.

Code, configs and READMEs cite the method through ``docs/dyndora.md#<anchor>``. Every cited anchor must be
a heading of that page, and no reference to documents outside the repository may come back (the old
"spec" section signs and numbered pitfalls, or the shared reference folder). The page's worked example
of the pruning schedule must be what ``Schedule`` computes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dora.methods.dyndora.allocator import Schedule

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "dyndora.md"
SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".md", ".cfg", ".ini"}
SKIP_DIRS = {"runs", "multirun", "outputs", "wandb", "__pycache__", "node_modules"}
# written so that this file does not match itself
OUTSIDE_REFS = re.compile(r"spec\s*\u00a7|pitfalls?\s*#\s*\d|shared/referenc[e]/", re.IGNORECASE)
CITED = re.compile(r"docs/dyndora\.md#([\w-]+)")


def repo_files() -> list[Path]:
    """Source, config and documentation files of the repository (top-level data/ and run outputs excluded)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        skip = SKIP_DIRS | ({"data"} if here == ROOT else set())
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip]
        found += [here / f for f in files if Path(f).suffix in SUFFIXES or f == "Makefile"]
    return sorted(found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_anchors() -> list[str]:
    return [slug(line.lstrip("#")) for line in DOC.read_text().splitlines() if re.match(r"#{1,6} ", line)]


def test_doc_anchors_are_unique():
    anchors = doc_anchors()
    assert len(anchors) == len(set(anchors)), sorted(a for a in anchors if anchors.count(a) > 1)


def test_no_references_to_documents_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in repo_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE_REFS.search(line)
    ]
    assert not hits, "cite docs/dyndora.md#<section> instead:\n" + "\n".join(hits)


def test_every_cited_anchor_exists():
    anchors = set(doc_anchors())
    cited = {
        (str(path.relative_to(ROOT)), anchor)
        for path in repo_files()
        for anchor in CITED.findall(path.read_text(errors="replace"))
    }
    assert len(cited) >= 30  # the comments do cite the page
    missing = sorted((path, anchor) for path, anchor in cited if anchor not in anchors)
    assert not missing, f"anchors not in docs/dyndora.md: {missing}"


def test_links_inside_the_doc_resolve():
    anchors = set(doc_anchors())
    links = re.findall(r"\]\(#([\w-]+)\)", DOC.read_text())
    assert links and not sorted(set(links) - anchors)


def test_worked_example_is_what_the_schedule_computes():
    """The table of docs/dyndora.md#worked-example: T = 210, 12 matrices, r' = 3 -> r = 2, ΔT = 10."""
    text = DOC.read_text().split("### Worked example", 1)[1].split("\n## ", 1)[0]
    rows = [
        [int(cell) for cell in line.strip("|").split("|")[:5]]
        for line in text.splitlines()
        if re.match(r"\| \d+ \|", line)
    ]
    sched = Schedule.build(210, 0.15, 0.5, 10, 12, 3, 2)
    expected = [
        [step, step - sched.warmup, k, max(k, 1), sched.n_components - k]
        for step in sched.events()
        for k in [sched.n_pruned(step)]
    ]
    assert rows == expected
    assert rows[-1][-1] == 12 * 2
