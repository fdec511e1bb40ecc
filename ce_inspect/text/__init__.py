"""Text to training layout: prompt/answer pairs, chat templates, TRL's preparations and the tokens, as
``(input_ids, labels)``; the plan of sliding windows over a long text. No model and no I/O."""

from ce_inspect.text.chat import chat_template, encode_chat, encode_messages, one_line, render_template
from ce_inspect.text.encoded import (
    ANSWER,
    BOS,
    EOS,
    EOT,
    IGNORE_INDEX,
    PROMPT,
    SEP,
    SPECIAL_TOKENS,
    TEMPLATE,
    TOKENIZATIONS,
    Encoded,
    Layout,
    check_chat_layout,
    context_length,
)
from ce_inspect.text.pair import boundary_note, encode, encode_pair, joint_split
from ce_inspect.text.tokens import byte_hex, decode_tokens, special_ids, special_prefix, text_ids
from ce_inspect.text.trl import encode_trl, encode_trl_language_modeling
from ce_inspect.text.validate import (
    check_answer,
    check_text,
    ignored_targets_note,
    parse_messages,
    scored_turns,
    text_notes,
)
from ce_inspect.text.windows import (
    check_stride,
    is_windowed,
    window_plan,
)

__all__ = [
    "ANSWER",
    "BOS",
    "EOS",
    "EOT",
    "PROMPT",
    "SEP",
    "TEMPLATE",
    "Encoded",
    "IGNORE_INDEX",
    "Layout",
    "SPECIAL_TOKENS",
    "TOKENIZATIONS",
    "boundary_note",
    "byte_hex",
    "chat_template",
    "check_answer",
    "check_chat_layout",
    "check_stride",
    "check_text",
    "context_length",
    "decode_tokens",
    "encode",
    "encode_chat",
    "encode_messages",
    "encode_pair",
    "encode_trl",
    "encode_trl_language_modeling",
    "ignored_targets_note",
    "is_windowed",
    "joint_split",
    "one_line",
    "parse_messages",
    "render_template",
    "scored_turns",
    "special_ids",
    "special_prefix",
    "text_ids",
    "text_notes",
    "window_plan",
]
