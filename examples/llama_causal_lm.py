"""DynDoRA on a decoder LLM shape: a tiny random-init Llama (built from LlamaConfig, no download),
trained as a byte-level causal LM on real text (the SST-2 sentences in data/demo) through the HF Trainer,
then exported to a standard PEFT LoRA adapter that plain ``PeftModel.from_pretrained`` loads, and merged.

    python examples/llama_causal_lm.py

Checks at the end: the PEFT-loaded model's logits and the merged model's logits equal the trained model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's dora, from anywhere

from dora.dyndora import DynDoRAConfig, DynDoRATrainer, inject_dyndora  # noqa: E402

TEXT = Path(__file__).resolve().parent.parent / "data" / "demo" / "glue" / "SST-2" / "train.tsv"
BLOCK = 64  # tokens (bytes) per training sequence


def byte_blocks(n_blocks: int, offset: int = 0) -> torch.Tensor:
    """(n_blocks, BLOCK) byte ids of the corpus, from block ``offset`` on (a byte is a token: vocabulary 256)."""
    lines = TEXT.read_text().splitlines()[1:]
    data = torch.tensor(list(" ".join(line.split("\t")[0].strip() for line in lines).encode()))
    return data[offset * BLOCK : (offset + n_blocks) * BLOCK].view(n_blocks, BLOCK)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="runs/examples/llama_causal_lm")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=BLOCK)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(out / "base")  # the frozen base, as a user would have it from the hub

    # q, k, v, o, gate, up, down in each layer (preset "llama", from model_type): 14 matrices, r' = 6 -> r = 4
    dyndora = inject_dyndora(model, DynDoRAConfig(r=4, dem_coef=0.1, prune_interval=5))
    train = [{"input_ids": x, "labels": x} for x in byte_blocks(args.steps * args.batch_size)]
    training = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=0.06, logging_steps=10, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    DynDoRATrainer(model=model, args=training, train_dataset=train, dyndora=dyndora).train()
    train_s = time.perf_counter() - t0

    model.eval()
    held_out = byte_blocks(4, offset=args.steps * args.batch_size)  # text the model has not seen
    with torch.no_grad():
        trained = model(held_out).logits
        eval_loss = model(held_out, labels=held_out).loss.item()
    dyndora.export_peft(out / "peft_lora")  # task type CAUSAL_LM, per-module ranks in rank_pattern
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(out / "base"), out / "peft_lora").eval()
    merged = dyndora.merge()
    with torch.no_grad():
        peft_gap = (peft(held_out).logits - trained).abs().max().item()
        merged_gap = (merged(held_out).logits - trained).abs().max().item()

    ranks = dyndora.rank_pattern()
    print(
        f"{args.steps} steps in {train_s:.0f} s ({args.threads} threads); held-out loss {eval_loss:.3f} "
        f"(uniform over bytes: {torch.log(torch.tensor(256.0)):.3f}); {sum(ranks.values())} active components "
        f"over {len(ranks)} matrices, per matrix {min(ranks.values())}..{max(ranks.values())}; "
        f"max |logit difference| PEFT-loaded {peft_gap:.2e}, merged {merged_gap:.2e}; adapter in {out}/peft_lora"
    )
    assert peft_gap < 1e-4 and merged_gap < 1e-4, "export or merge does not reproduce the trained model"


if __name__ == "__main__":
    main()
