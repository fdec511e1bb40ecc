"""The checks a model passes before it is scored, and transformers' failures told in ce-inspect's words.

Whatever the source, a model is scored only if it is a causal LM whose checkpoint supplies every weight
it uses and nothing else (transformers would silently fill the gaps with random values).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ce_inspect.errors import ModelLoadError, ModelNotFoundError
from ce_inspect.model.hub import from_pretrained

# The files a tokenizer is read from, in any of the formats transformers knows (fast, sentencepiece, BPE,
# WordPiece, tiktoken); a folder with none of them cannot have a tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_tokenizer_files(folder: Path) -> None:
    """A folder without any tokenizer file would fail deep in transformers with a backend error."""
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return
    if any(folder.glob("*.model")) or any(folder.glob("*.tiktoken")) or any(folder.glob("tokenizer*")):
        return
    raise ModelLoadError(
        f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...); "
        "copy them from the model it was trained from"
    )


def check_causal_lm(folder: str, source: str, revision: str | None, trust_remote_code: bool) -> None:
    """Refuse a model that is not a causal LM before spending time on weights and tokenizer.

    transformers maps some encoder families (BERT, RoBERTa, ...) to a causal-LM class too, but that class
    attends causally only when the config says ``is_decoder``; an encoder checkpoint would load with
    bidirectional attention, every target visible to the positions predicting it. Encoder-decoder
    checkpoints would load their decoder alone, without the encoder it was trained with.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    try:
        config = from_pretrained(
            AutoConfig.from_pretrained, folder, source, revision, trust_remote_code=trust_remote_code
        )
    except ModelNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise remote_code_error(folder, exc) or ModelLoadError(
            f"could not read the model config in {folder}: {one_line(exc)}"
        ) from exc
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return  # the folder's own code defines the model (allowed by `trust_remote_code`)
    model_type = config.model_type
    architectures = ", ".join(getattr(config, "architectures", None) or []) or model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{folder} is a {model_type!r} model, not a causal language model "
            "(AutoModelForCausalLM cannot load it); ce-inspect needs a decoder with a language-model head"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{folder} is an encoder-decoder model ({architectures}), not a causal language model; "
            "ce-inspect needs a decoder-only model"
        )
    # The encoder families: those with a masked-LM head, and BERT's generation variant (which has none);
    # they attend causally only when the config says so (`is_decoder`, or `causal` for XLM). XLNet's
    # default `attn_type` "bi" lets every position see the whole sequence too.
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type == "bert-generation"
    declared_decoder = getattr(config, "is_decoder", False) or getattr(config, "causal", False)
    if (encoder and not declared_decoder) or getattr(config, "attn_type", None) == "bi":
        raise ModelLoadError(
            f"{folder} is an encoder ({architectures}) with bidirectional attention, not a causal language "
            f"model (its {model_type!r} config does not make it a decoder); ce-inspect needs a decoder"
        )


def remote_code_error(folder: str, exc: BaseException) -> ModelLoadError | None:
    """transformers' refusal to run a folder's own code, told in ce-inspect's words (or None)."""
    if "trust_remote_code" not in str(exc):
        return None
    return ModelLoadError(
        f"{folder} holds its own Python code for the model or tokenizer, which runs only with "
        "`trust_remote_code`; allow it only for code you trust"
    )


def unsafe_pickle_error(folder: str) -> ModelLoadError:
    """A pickle checkpoint that torch's safe loader (``weights_only``) refuses, told in ce-inspect's words
    (torch's own advice is to load it unsafely, and it runs past one line)."""
    try:
        files = sorted(p.name for p in Path(folder).iterdir() if re.search(r"\.(bin|pt|pth)$", p.name, re.IGNORECASE))
    except OSError:
        files = []
    what = f"{', '.join(files)} in {folder}" if files else f"the pickle checkpoint of {folder}"
    return ModelLoadError(
        f"{what} holds Python objects or code besides tensors, which torch's safe loader refuses (unpickling "
        "them could run any code); ce-inspect does not load it unsafely: only if you trust its source, convert "
        "it to safetensors (torch.load with weights_only=False, then safetensors.torch.save_file)"
    )


def check_vocabulary(folder: str, model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer with token ids that the model's embedding (or head) has no row for.

    A config whose `vocab_size` is below the tokenizer's ids builds an embedding that every such id indexes
    out of range (torch's ``IndexError`` at the first text that uses one). More rows than the tokenizer
    has ids is common (vocabularies padded to a multiple of 64 or 128) and fine.
    """
    largest = max([len(tokenizer) - 1, *tokenizer.get_vocab().values()])
    sizes = {"embedding": model.get_input_embeddings().weight.shape[0]}
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        sizes["head"] = head.weight.shape[0]
    short = {name: int(rows) for name, rows in sizes.items() if largest >= rows}
    if short:
        rows = ", ".join(f"its {name} {n}" for name, n in short.items())
        raise ModelLoadError(
            f"the tokenizer of {folder} has token ids up to {largest}, but the model has rows for fewer ({rows}; "
            f"`vocab_size` {getattr(model.config, 'vocab_size', '?')} in config.json): the model and the tokenizer "
            "do not belong together; use the tokenizer the model was trained with, or resize its embeddings"
        )


def check_weights(folder: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not match the model one for one.

    transformers fills a weight missing from the checkpoint (or of the wrong shape) with random values and
    only logs it: every figure would be noise that looks like a loss. It already leaves out the known
    harmless differences (a head tied to the embeddings, rotary ``inv_freq`` and ``position_ids`` buffers
    of older checkpoints, each model's own ignore lists), so anything left here is a real mismatch. A
    weight the model does not use is refused too: it means the checkpoint was written for another
    architecture or with other names, and what it was meant to hold is not what runs.
    """
    problems = []
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        problems.append(f"lacks {_count_and_first(missing)} (transformers would fill them with random values)")
    mismatched = sorted(
        str(entry[0] if isinstance(entry, tuple) else entry) for entry in info.get("mismatched_keys") or []
    )
    if mismatched:
        problems.append(f"has {_count_and_first(mismatched)} of the wrong shape for its config")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        problems.append(f"has {_count_and_first(unexpected)} that the model does not use")
    if problems:
        raise ModelLoadError(
            f"the checkpoint in {folder} does not match its model: it {'; it '.join(problems)}; "
            "the figures would not be this model's"
        )


def _count_and_first(keys: list[str], shown: int = 3) -> str:
    """``"1 weight (a)"``, ``"2 weights (a, b)"`` or ``"40 weights (a, b, c, ...)"``."""
    names = ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
    return f"{len(keys)} weight{'s' if len(keys) != 1 else ''} ({names})"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
