"""The command line's view of library errors: parameter names become the flags that set them."""

from __future__ import annotations

import re

# Library parameter -> the flag that sets it. Only these names are replaced, so backquoted user text
# in a message stays as it is; add a parameter here when a library message names it.
FLAGS: dict[str, str] = {
    "model": "--model",
    "revision": "--revision",
    "device": "--device",
    "dtype": "--dtype",
    "device_map": "--device-map",
    "trust_remote_code": "--trust-remote-code",
    "sep": "--sep",
    "add_eos": "--no-eos",
    "ignore_index": "--ignore-index",
    "mask_prompt": "--no-mask-prompt",
    "truncate_prompt": "--truncate-prompt",
    "chat": "--chat",
    "system": "--system",
    "tokenization": "--tokenization",
    "label_smoothing": "--label-smoothing",
    "reduction": "--reduction",
    "top_k": "--top-k",
    "verify": "--verify",
    "chunk_tokens": "--chunk-tokens",
    "last_turn": "--last-turn",
    "batch_size": "--batch-size",
    "max_tokens": "--max-tokens",
    "padding_side": "--padding-side",
    "sort_window": "--sort-window",
    "worst": "--worst",
    "format": "--format",
    "split": "--split",
    "stride": "--stride",
    "max_length": "--max-length",
    "fail_on": "--fail-on",
}

_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")


def cli_message(message: str) -> str:
    """``message`` with every backquoted library parameter shown as its command-line flag."""
    return _PARAM.sub(lambda m: FLAGS.get(m[1], m[0]), message)
