"""XSum: ROUGE against rouge-score's own values, jsonl loading, BART's adapted matrices, end-to-end runs."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from rouge_score import rouge_scorer
from torch.utils.data import DataLoader

from dora.errors import UserError
from dora.methods import METHODS
from dora.models import adapted_linears, byte_level_tokenizer, load_backbone
from tasks import evaluate_split
from tasks.xsum import Xsum, XsumConfig, read_jsonl, rouge, split_sentences
from tests.helpers import compose, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rouge_hand_values():
    # 5 of 6 unigrams shared; bigrams: the cat, on the, the mat = 3 of 5; LCS "the cat on the mat" = 5
    out = rouge(["the cat lay on the mat"], ["the cat sat on the mat"])
    assert out == pytest.approx({"rouge1": 100 * 5 / 6, "rouge2": 60.0, "rougeL": 100 * 5 / 6})
    assert rouge(["Same words here."], ["same words here"]) == pytest.approx(dict.fromkeys(out, 100.0))
    assert rouge(["cats"], ["cat"])["rouge1"] == 0.0  # stemmer off


def test_rouge_equals_rouge_score_on_sentence_lines():
    preds = ["A storm hit the coast. Power was cut to 5,000 homes.", "The club signed a new striker."]
    refs = [
        "Thousands of homes lost power after a storm hit the coast.",
        "A striker joined the club on Monday.",
    ]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=False)
    own = [scorer.score(split_sentences(r), split_sentences(p)) for p, r in zip(preds, refs, strict=True)]
    expected = {
        name: 100 * sum(s[kind].fmeasure for s in own) / len(own)
        for name, kind in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", "rougeLsum"))
    }
    assert rouge(preds, refs) == pytest.approx(expected)


def test_sentences_go_on_separate_lines_for_rouge_l():
    assert (
        split_sentences("It rained. Then it stopped! Did it? Yes.")
        == "It rained.\nThen it stopped!\nDid it?\nYes."
    )
    assert split_sentences("He paid 3.5m for it.") == "He paid 3.5m for it."
    # summary-level LCS: swapped sentences still match whole; one flat sequence would give 50
    assert rouge(["D e f. A b c."], ["A b c. D e f."])["rougeL"] == pytest.approx(100.0)


def test_jsonl_reader_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"document": "D1", "summary": "S1", "id": "1"}\n\n{"document": "D2", "summary": "S2"}\n')
    assert read_jsonl(str(path)) == {"document": ["D1", "D2"], "summary": ["S1", "S2"]}
    path.write_text('{"document": "D1"}\n')
    with pytest.raises(UserError, match="line 1"):
        read_jsonl(str(path))


def test_bart_adapts_self_and_cross_attention_separately():
    cfg = compose("task=xsum", "model=tiny_bart")
    bb = load_backbone(cfg.model, "seq2seq", 0)
    names = [n for n, _ in adapted_linears(bb.model, "bart")]
    encoder, decoder = cfg.model.tiny["encoder_layers"], cfg.model.tiny["decoder_layers"]
    # 6 per encoder layer, 10 per decoder layer (bart-base: 6*6 + 6*10 = 96)
    assert len(names) == 6 * encoder + 10 * decoder
    assert sum(".decoder." in n and ".self_attn." in n for n in names) == 4 * decoder
    assert sum(".encoder_attn." in n for n in names) == 4 * decoder


@pytest.fixture(scope="module")
def xsum_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "xsum").mkdir()
    rows = [
        {"document": f"Officials in town {i} said the bridge would reopen in spring. Work began last year.",
         "summary": f"A bridge in town {i} will reopen in spring.", "id": str(i)}
        for i in range(12)
    ]  # fmt: skip
    (root / "xsum" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    (root / "xsum" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    return root


# 3 steps < one epoch (8 training rows, batch 2): a single evaluation per run
SMALL = ("trainer.max_steps=3", "trainer.batch_size=2", "trainer.log_every=1", "task.max_new_tokens=8")


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_xsum(tmp_path, xsum_dir, method):
    result = run_inprocess(
        tmp_path, "task=xsum", f"method={method}", "model=tiny_bart", f"data_dir={xsum_dir}", *SMALL
    )
    metrics = result["metrics"]
    assert set(metrics) == {"dev/rouge1", "dev/rouge2", "dev/rougeL"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert result["headline"] == "dev/rougeL" and "fallback" not in result["data"]


def test_split_override_and_predict_limit_on_real_data(tmp_path, data_dir):
    overrides = (
        "task.splits.train=test_sample1000:0:8",
        "task.splits.dev=test_sample1000:8:20",
        "task.predict_limit=3",
    )
    result = run_inprocess(
        tmp_path, "task=xsum", "method=full", "model=tiny_bart", f"data_dir={data_dir}", *SMALL, *overrides
    )
    assert result["data"]["predict_limit"] == 3
    assert result["data"]["same_source"] == ["dev", "train"]
    assert {"dev/rouge1", "dev/rouge2", "dev/rougeL"} == set(result["metrics"])


class Oracle(torch.nn.Module):
    """``generate`` returns each document's gold summary (as token ids, padded per batch)."""

    def __init__(self, tokenizer, documents, summaries):
        super().__init__()
        docs = tokenizer(documents, truncation=True, max_length=768)["input_ids"]
        self.gold = {tuple(d): tokenizer(s)["input_ids"] for d, s in zip(docs, summaries, strict=True)}
        self.pad = tokenizer.pad_token_id

    def generate(self, input_ids, attention_mask, num_beams, max_new_tokens):
        rows = [
            self.gold[tuple(i for i, m in zip(ids, mask, strict=True) if m)]
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)
        ]
        width = max(map(len, rows))
        return torch.tensor([r + [self.pad] * (width - len(r)) for r in rows])


def test_oracle_summaries_score_100_through_the_whole_pipeline(xsum_dir):
    cfg = XsumConfig(name="xsum", splits={"train": "train", "dev": "validation"}, predict_limit=3)
    task = Xsum(cfg, str(xsum_dir))
    tok = byte_level_tokenizer()
    data = task.load(tok, cfg.max_length)
    raw = task.raw_split("validation")
    assert len(data.evals["dev"]) == 3 and len(raw["summary"]) == 4  # predict_limit
    loader = DataLoader(data.evals["dev"], batch_size=2, collate_fn=task.collator(tok))
    oracle = Oracle(tok, raw["document"], raw["summary"])
    metrics = evaluate_split(task, oracle, loader, Accelerator(cpu=True), "dev")
    assert metrics == {"dev/rouge1": 100.0, "dev/rouge2": 100.0, "dev/rougeL": 100.0}
    assert task.predictions["dev"] == raw["summary"][:3]
