"""data/fixtures: what the manifest says they are, and (with the full files) that they are exact prefixes."""

from __future__ import annotations

import hashlib
import json

import pytest

from scripts.make_fixtures import build
from tests.helpers import REPO

FIXTURES = REPO / "data" / "fixtures"


def _manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


def test_every_fixture_file_matches_its_manifest_entry():
    manifest = _manifest()
    on_disk = {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "README.md")
    }
    assert on_disk == set(manifest)
    for path, entry in manifest.items():
        assert hashlib.sha256((FIXTURES / path).read_bytes()).hexdigest() == entry["sha256"], path


def test_the_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 1_500_000  # shipped in the repository: keep it small


@pytest.mark.full_data
def test_fixtures_are_cut_from_the_full_files(full_data_dir):
    """Rebuilt from the full files, every fixture is byte-identical and its source is the recorded one."""
    manifest = _manifest()
    rebuilt = build(full_data_dir)
    assert set(rebuilt) == set(manifest)
    for path, (data, entry) in rebuilt.items():
        assert entry["source_sha256"] == manifest[path]["source_sha256"], f"{path}: another source file"
        assert data == (FIXTURES / path).read_bytes(), path
