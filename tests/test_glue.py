"""GLUE loaders on the real files (data/fixtures; official row counts on the full files), tsv traps,
split specs and metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dora.config import TaskConfig
from dora.errors import UserError
from tasks import build_task, metrics
from tasks.data import parse_split, shared_sources
from tasks.glue import GLUE, read_tsv

# (task, split file, official rows, label counts when known) — shared/data/README.md
OFFICIAL = [
    ("cola", "train", 8551, {1: 6023, 0: 2528}),
    ("cola", "dev", 1043, {1: 721, 0: 322}),
    ("sst2", "train", 67349, None),
    ("sst2", "dev", 872, None),
    ("mrpc", "train", 3668, None),
    ("mrpc", "dev", 408, None),
    ("stsb", "train", 5749, None),
    ("stsb", "dev", 1500, None),
    ("rte", "train", 2490, {0: 1249, 1: 1241}),  # entailment / not_entailment
    ("rte", "dev", 277, None),
    ("qnli", "dev", 5463, None),
    ("qqp", "train_sample", 23497, {0: 14750, 1: 8747}),
]


@pytest.mark.full_data
def test_full_files_have_the_official_row_counts(full_data_dir):
    wrong = []
    for task, split, rows, labels in OFFICIAL:
        spec = GLUE[task]
        cols = read_tsv(str(full_data_dir / "glue" / spec.folder / f"{split}.tsv"), spec)
        assert all(isinstance(t, str) for t in cols["text_a"][:50])
        values, counts = np.unique(cols["labels"], return_counts=True)
        got = dict(zip(values.tolist(), counts.tolist(), strict=True))
        if len(cols["text_a"]) != rows or len(cols["labels"]) != rows or (labels and got != labels):
            wrong.append(f"{task}/{split}: {len(cols['labels'])} rows, labels {got if labels else '-'}")
    assert not wrong, wrong


def test_fixture_slices_read_whole(data_dir):
    """data/fixtures: 300 training and 100 dev rows per task, every label present."""
    for task, split, rows in [(t, s, 300 if s.startswith("train") else 100) for t, s, *_ in OFFICIAL]:
        spec = GLUE[task]
        cols = read_tsv(str(data_dir / "glue" / spec.folder / f"{split}.tsv"), spec)
        assert len(cols["labels"]) == len(cols["text_a"]) == rows, (task, split)
        if not spec.regression:
            assert len(set(cols["labels"])) == len(spec.labels or (0, 1)), (task, split)


def test_tsv_traps(data_dir):
    cola = read_tsv(str(data_dir / "glue/CoLA/dev.tsv"), GLUE["cola"])  # no header: first row is data
    assert cola["text_a"][0] == "The sailors rode the breeze clear of the rocks." and cola["labels"][0] == 1
    mrpc = read_tsv(str(data_dir / "glue/MRPC/dev.tsv"), GLUE["mrpc"])  # BOM before "Quality"
    assert mrpc["text_b"][0].startswith('" The foodservice pie')  # quotes kept verbatim (QUOTE_NONE)
    stsb = read_tsv(str(data_dir / "glue/STS-B/dev.tsv"), GLUE["stsb"])
    assert stsb["labels"][0] == 5.0 and min(stsb["labels"]) >= 0 and max(stsb["labels"]) <= 5


def _task(name, data_dir, **splits):
    return build_task(TaskConfig(name=name, splits=splits or {"train": "train", "dev": "dev"}), str(data_dir))


def test_tokenised_splits_and_slices(data_dir):
    from dora.models import byte_level_tokenizer

    task = _task("rte", data_dir, train="train::10%", dev="dev:0:50")
    data = task.load(byte_level_tokenizer(), max_length=32)
    assert len(data.train) == 30 and len(data.evals["dev"]) == 50  # 10 % of the fixture's 300 rows
    assert max(len(ids) for ids in data.train["input_ids"]) == 32
    assert set(data.train.column_names) >= {"input_ids", "attention_mask", "labels"}
    assert task.headline == "dev/accuracy" and task.num_labels == 2


def test_heads_and_headlines(data_dir):
    assert (_task("stsb", data_dir).head, _task("stsb", data_dir).num_labels) == ("regression", 1)
    assert _task("cola", data_dir).headline == "dev/mcc"
    mnli = build_task(
        TaskConfig(
            name="mnli",
            splits={"train": "train", "dev_matched": "dev_matched", "dev_mismatched": "dev_mismatched"},
        ),
        None,
    )
    assert mnli.num_labels == 3 and mnli.eval_splits == ["dev_matched", "dev_mismatched"]
    assert mnli.headline == "dev_matched/accuracy"


def test_missing_files_are_named_with_the_alternatives(data_dir):
    with pytest.raises(UserError, match=r"missing train file .*QQP/train.tsv; files there: train_sample"):
        _task("qqp", data_dir).check_data()
    with pytest.raises(UserError, match=r"missing train file .*MNLI/train.tsv; no GLUE files there"):
        build_task(
            TaskConfig(name="mnli", splits={"train": "train", "dev_matched": "dev_matched"}), str(data_dir)
        ).check_data()


def test_malformed_tsv_is_one_clear_error(tmp_path):
    bad = tmp_path / "glue" / "RTE"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(UserError, match=r"line 2 has label 'maybe'; expected entailment, not_entailment"):
        read_tsv(str(bad / "train.tsv"), GLUE["rte"])
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly one field\n")
    with pytest.raises(UserError, match=r"line 2 has 2 fields, expected at least 4"):
        read_tsv(str(bad / "train.tsv"), GLUE["rte"])
    (bad / "train.tsv").write_text("idx\ttext\n")
    with pytest.raises(UserError, match=r"header lacks columns"):
        read_tsv(str(bad / "train.tsv"), GLUE["rte"])


@pytest.mark.parametrize(
    ("spec", "n", "bounds"),
    [
        ("train", 10, (0, 10)),
        ("train::90%", 10, (0, 9)),
        ("train:90%:", 10, (9, 10)),
        ("dev[:3]", 10, (0, 3)),
        ("dev:2:-2", 10, (2, 8)),
    ],
)
def test_split_specs(spec, n, bounds):
    assert parse_split(spec).bounds(n) == bounds


def test_bad_split_spec_and_shared_sources():
    with pytest.raises(UserError, match="bad split spec"):
        parse_split("train[abc]")
    assert shared_sources({"train": "train_sample::90%", "dev": "train_sample:90%:"}) == ["dev", "train"]
    assert shared_sources({"train": "train", "dev": "dev"}) == []


def test_metrics_against_hand_computed_values():
    y = [1, 1, 0, 0, 1]
    p = [1, 0, 0, 1, 1]
    # TP=2 FP=1 FN=1 TN=1: accuracy 3/5; F1 = 2·2/(2·2+1+1) = 2/3; MCC = (2·1−1·1)/sqrt(3·3·2·2) = 1/6
    out = metrics.compute(("accuracy", "f1", "mcc"), p, y)
    assert out["accuracy"] == pytest.approx(60.0)
    assert out["f1"] == pytest.approx(200 / 3)
    assert out["mcc"] == pytest.approx(100 / 6)
    # Pearson of (1,2,3) vs (1,2,4): cov=1.5, sd 1 and 1.5275 -> 0.98198; Spearman = 1 (same ranks)
    r = metrics.compute(("pearson", "spearman"), [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert r["pearson"] == pytest.approx(100 * 1.5 / math.sqrt(1.0 * 7 / 3), abs=1e-6)
    assert r["spearman"] == pytest.approx(100.0)
    assert metrics.compute(("pearson",), [2.0, 2.0, 2.0], [1.0, 2.0, 4.0])["pearson"] == 0.0
