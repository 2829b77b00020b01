"""Cut the small real-data fixtures in ``data/fixtures/`` out of the full benchmark files.

The fixtures keep the layout of a ``data_dir`` (``glue/<Task>/<split>.tsv``, ``squad/*.json``,
``xsum/*.jsonl``) and the names of the files they come from, so ``data_dir=data/fixtures`` works with
every default split and offline fallback. Each one is a prefix of its source:

- GLUE tsv: the header (none for CoLA) and the first rows, byte for byte (BOM and line ends kept);
- SQuAD json: the first articles, each cut to its first paragraphs;
- XSum jsonl: the first documents, byte for byte.

``manifest.json`` records, per file, what was taken and the sha256 of source and fixture;
``tests/test_fixtures.py`` rebuilds the fixtures from the full files (when DORA_DATA_DIR is set) and
compares bytes.

    python scripts/make_fixtures.py --source ../shared/data --out data/fixtures
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

GLUE_TRAIN_ROWS = 300
GLUE_DEV_ROWS = 100
# (path under the data folder, data rows, has a header line)
GLUE = [
    ("glue/CoLA/train.tsv", GLUE_TRAIN_ROWS, False),
    ("glue/CoLA/dev.tsv", GLUE_DEV_ROWS, False),
    ("glue/SST-2/train.tsv", GLUE_TRAIN_ROWS, True),
    ("glue/SST-2/dev.tsv", GLUE_DEV_ROWS, True),
    ("glue/MRPC/train.tsv", GLUE_TRAIN_ROWS, True),
    ("glue/MRPC/dev.tsv", GLUE_DEV_ROWS, True),
    ("glue/STS-B/train.tsv", GLUE_TRAIN_ROWS, True),
    ("glue/STS-B/dev.tsv", GLUE_DEV_ROWS, True),
    ("glue/RTE/train.tsv", GLUE_TRAIN_ROWS, True),
    ("glue/RTE/dev.tsv", GLUE_DEV_ROWS, True),
    ("glue/QNLI/dev.tsv", GLUE_DEV_ROWS, True),
    ("glue/QQP/train_sample.tsv", GLUE_TRAIN_ROWS, True),
]
COPIED = ["glue/STS-B/LICENSE.txt"]  # the STS Benchmark's licence note travels with its data
# (path, articles, paragraphs per article)
SQUAD = [("squad/dev-v1.1.json", 2, 12), ("squad/dev-v2.0.sample-2articles.json", 2, 12)]
XSUM = [("xsum/test_sample1000.jsonl", 40)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tsv_prefix(data: bytes, rows: int, header: bool) -> bytes:
    """The header line (if any) and the first ``rows`` non-empty lines, unchanged."""
    lines = data.splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    body = [line for line in body if line.strip()][:rows]
    if body and not body[-1].endswith(b"\n"):
        body[-1] += b"\n"
    return b"".join(head + body)


def squad_prefix(data: bytes, articles: int, paragraphs: int) -> bytes:
    full = json.loads(data)
    cut = [{**a, "paragraphs": a["paragraphs"][:paragraphs]} for a in full["data"][:articles]]
    return json.dumps({"version": full["version"], "data": cut}, ensure_ascii=False).encode()


def jsonl_prefix(data: bytes, rows: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:rows])


def build(source: Path) -> dict[str, tuple[bytes, dict]]:
    """path -> (fixture bytes, manifest entry), computed from the full files under ``source``."""
    out = {}

    def add(path: str, make, taken: dict) -> None:
        data = (source / path).read_bytes()
        fixture = make(data)
        out[path] = (fixture, {**taken, "source_sha256": sha256(data), "sha256": sha256(fixture)})

    for path, rows, header in GLUE:
        add(path, lambda d, r=rows, h=header: tsv_prefix(d, r, h), {"rows": rows, "header": header})
    for path in COPIED:
        add(path, lambda d: d, {"copy": True})
    for path, articles, paragraphs in SQUAD:
        add(
            path,
            lambda d, a=articles, p=paragraphs: squad_prefix(d, a, p),
            {"articles": articles, "paragraphs_per_article": paragraphs},
        )
    for path, rows in XSUM:
        add(path, lambda d, r=rows: jsonl_prefix(d, r), {"rows": rows})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", required=True, type=Path, help="the full data folder (shared/data)")
    parser.add_argument("--out", default=Path("data/fixtures"), type=Path)
    args = parser.parse_args(argv)
    files = build(args.source)
    for path, (data, _) in files.items():
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    manifest = {path: entry for path, (_, entry) in files.items()}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(len(d) for d, _ in files.values())
    print(f"{len(files)} files, {total / 1e6:.2f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
