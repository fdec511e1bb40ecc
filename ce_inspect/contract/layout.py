"""The ``layout`` of run's document and each batch line: how the example was laid out and tokenized, one
TypedDict per form (pair, chat, trl, text, tokenized, and ``choices``'s lm-eval request)."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

from typing import Literal

from ce_inspect.contract.wire import NotRequired, TypedDict


class BoundaryTokenDict(TypedDict):
    token_id: int
    token: str
    part: Literal["prompt", "answer"]


class TokenCountsDict(TypedDict):
    separate: int
    joint: int


class BoundaryDict(TypedDict):
    """How separate and joint tokenization split a pair; the token windows only where they differ."""

    differs: bool
    used: Literal["separate", "joint"]
    answer_tokens: TokenCountsDict
    start: NotRequired[int]  # position of each window's first token
    separate: NotRequired[list[BoundaryTokenDict]]
    joint: NotRequired[list[BoundaryTokenDict]]


class PairLayoutDict(TypedDict):
    kind: Literal["pair"]
    bos: bool
    sep: str | None
    eos: bool
    mask_prompt: bool
    prompt_tokens: int
    answer_tokens: int
    tokenization: Literal["separate", "joint"]
    special_tokens: Literal["parse", "text"]  # special-token text in the user's text: control tokens, or plain text
    boundary: BoundaryDict
    sequence_tokens: int
    scored_tokens: int


class TemplateMaskUnusedDict(TypedDict):
    used: Literal[False]
    reason: str


class TemplateMaskDict(TypedDict):
    """The template's own ``{% generation %}`` mask, compared with the generation-prompt prefix."""

    used: Literal[True]
    agrees: bool
    only_template: list[int]  # positions only the template's mask scores
    only_prefix: list[int]  # positions only the prefix method scores


class ChatLayoutDict(TypedDict):
    kind: Literal["chat"]
    source: Literal["pair", "messages"]
    eos: bool
    mask_prompt: bool
    system: str | None
    default_system_prompt: str | None  # the system text the template injects on its own
    messages: int
    roles: list[str]
    scored_turns: list[int]
    last_turn: bool
    end_of_turn: str | None
    answer_tokens: int
    template_mask: TemplateMaskDict | TemplateMaskUnusedDict | None  # null: no {% generation %} tag
    special_tokens: Literal["parse", "text"]  # always parse: a template's rendering is tokenized as one string
    sequence_tokens: int
    scored_tokens: int


class WindowsDict(TypedDict):
    """Text longer than the context, scored in sliding windows of ``window`` tokens advancing by ``stride``."""

    window: int
    stride: int


class TrlLayoutDict(TypedDict):
    """``tokenization="trl"``: TRL's own split (prompt/completion pairs) or its language-modelling types."""

    kind: Literal["trl"]
    conversational: bool
    eos: bool
    tokenization: Literal["trl"]
    mask_prompt: NotRequired[bool]  # prompt/completion pairs only, like the three below
    prompt_tokens: NotRequired[int]  # where TRL starts the completion: the common prefix of the two tokenizations
    prompt_tokens_alone: NotRequired[int]  # the prompt tokenized on its own
    answer_tokens: NotRequired[int]
    windows: NotRequired[WindowsDict]
    window_count: NotRequired[int]
    sequence_tokens: int
    scored_tokens: int


class RollingDict(TypedDict):
    """A ``text`` record scored as lm-eval's ``loglikelihood_rolling``: disjoint windows of ``window`` predicted
    tokens after ``prefix_token_id``; ``special_tokens``: the tokenizer's own leading ones, scored as lm-eval does."""

    window: int
    prefix_token_id: int
    special_tokens: int


class TextLayoutDict(TypedDict):
    """A ``text`` record (language modelling): every token after the first is scored."""

    kind: Literal["text"]
    bos: bool
    eos: bool
    text_tokens: int
    windows: NotRequired[WindowsDict]
    rolling: NotRequired[RollingDict]
    window_count: NotRequired[int]
    sequence_tokens: int
    scored_tokens: int


class TokenizedLayoutDict(TypedDict):
    """A pre-tokenized record, scored exactly as given."""

    kind: Literal["tokenized"]
    labels_from: str  # "labels", "completion_mask" or "assistant_masks"
    trained: int
    sequence_tokens: int
    scored_tokens: int


class LmEvalLayoutDict(TypedDict):
    """``choices``'s default: a (context, continuation) request exactly as lm-evaluation-harness builds it."""

    kind: Literal["lm-eval"]
    prefix_tokens: int  # special tokens the tokenizer put before the context (BOS), or the empty context's prefix
    context_tokens: int  # with prefix_tokens
    answer_tokens: int
    moved_spaces: int  # trailing whitespace of the context moved to the continuation
    empty_context: bool  # the context was empty: the prefix token (BOS, else EOS) stands for it
    sequence_tokens: int
    scored_tokens: int


LayoutDict = PairLayoutDict | ChatLayoutDict | TrlLayoutDict | TextLayoutDict | TokenizedLayoutDict | LmEvalLayoutDict
