"""The training example (``Encoded``), its segment names and constants, and the ``Layout`` options.

Labels are the input ids with every position that is not trained set to ``ignore_index``; the shift
by one happens in scoring, exactly where the model's own loss does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ce_inspect.errors import InputError
from ce_inspect.text.validate import check_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

#: Segment names used in ``Encoded.segments``; scored positions are those whose label is not ignored.
BOS, PROMPT, SEP, ANSWER, EOS = "bos", "prompt", "sep", "answer", "eos"
#: Chat segments: each message's content is named by its role (system, user, assistant, tool, ...);
#: text the template adds around it is ``template``; the token that closes an assistant turn is ``eot``.
TEMPLATE, EOT = "template", "eot"
#: How a prompt/answer pair is split into tokens (see the docstring of `ce_inspect.text.pair`).
TOKENIZATIONS = ("separate", "joint", "trl")
#: What special-token text inside the user's text becomes: ``parse`` (the tokenizer's default, what a
#: training pipeline's tokenizer call does) makes ``<|im_end|>`` one control token; ``text`` encodes it
#: as the plain characters it is made of (``split_special_tokens=True``). Pairs only: a chat template's
#: rendering is one string, where the template's own markers and the messages' text cannot be told apart.
SPECIAL_TOKENS = ("parse", "text")


@dataclass(frozen=True)
class Encoded:
    """One training example, unshifted: ``labels[i]`` is the target for the logits at ``i - 1``."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    segments: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    truncated_prompt_tokens: int = 0
    notes: tuple[str, ...] = ()
    layout: dict[str, Any] = field(default_factory=dict)
    #: Chat only: per position, the index of the message whose rendering holds it (None: template text
    #: outside every message, such as an injected default system prompt). Empty for pairs.
    turns: tuple[int | None, ...] = ()
    #: Chat only: the role of each message, indexed like ``turns``.
    turn_roles: tuple[str, ...] = ()
    #: Whether an example with no target is invalid (the scan refuses it). A preference pair is not: one whose
    #: prompt fills ``max_length`` is reported by its pair check, as the pair TRL drops.
    requires_targets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (len(self.input_ids) == len(self.labels) == len(self.segments)):
            raise ValueError("input_ids, labels and segments must have the same length")
        if self.turns and len(self.turns) != len(self.input_ids):
            raise ValueError("turns must be empty or have one entry per position")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def scored_positions(self) -> list[int]:
        """Positions whose token is a training target (never position 0: nothing predicts it)."""
        return [i for i in range(1, len(self.labels)) if self.labels[i] != self.ignore_index]


def context_length(model_config: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The longest sequence the model takes, from its config (the tokenizer's limit is often a sentinel)."""
    config = getattr(model_config, "text_config", None) or model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return None


@dataclass(frozen=True)
class Layout:
    """How a prompt/answer pair becomes a training example (the options `run` and `batch` share).

    ``chat`` renders the pair with the tokenizer's chat template (user = prompt, assistant = answer,
    ``system`` as a system message); ``tokenization`` picks the pair split, ``separate`` or ``joint``.
    With ``chat``, ``add_eos`` decides whether the template's end-of-turn token is scored.
    ``special_tokens`` (pairs only) is ``parse`` or ``text``, see ``SPECIAL_TOKENS``. ``system`` and ``sep``
    pass ``check_text``.
    """

    sep: str | None = None
    add_eos: bool = True
    ignore_index: int = IGNORE_INDEX
    mask_prompt: bool = True
    truncate_prompt: bool = False
    chat: bool = False
    system: str | None = None
    tokenization: str = "separate"
    special_tokens: str = "parse"
    #: ``text`` records longer than the context: scored in windows that advance by this many tokens.
    stride: int | None = None
    #: ``text`` records scored as lm-eval's ``loglikelihood_rolling`` (disjoint windows, one token of context).
    rolling: bool = False
    #: lm-eval's ``max_length`` for ``rolling`` (None: the model's context).
    rolling_window: int | None = None

    def __post_init__(self) -> None:
        if self.stride is not None and self.stride < 1:
            raise InputError(f"`stride` must be at least 1 token, got {self.stride}")
        self._check_rolling()
        if self.tokenization not in TOKENIZATIONS:
            raise InputError(f"unknown `tokenization` {self.tokenization!r}; use separate, joint or trl")
        if self.tokenization == "trl" and (self.sep or self.truncate_prompt):
            raise InputError(
                "`tokenization` trl reproduces TRL, which has no `sep` and no `truncate_prompt`; drop them"
            )
        if self.special_tokens not in SPECIAL_TOKENS:
            raise InputError(f"unknown `special_tokens` {self.special_tokens!r}; use parse or text")
        if self.tokenization == "trl" and self.special_tokens != "parse":
            raise InputError(
                "`tokenization` trl reproduces TRL, whose tokenizer call parses special-token text; "
                "drop `special_tokens`"
            )
        if self.system is not None:
            check_text(self.system, "the system prompt")
        if self.sep is not None:
            check_text(self.sep, "the separator")
        if self.chat:
            check_chat_layout(self)
        elif self.system is not None:
            raise InputError("`system` needs `chat`: the chat template is what places a system prompt")

    def _check_rolling(self) -> None:
        if self.rolling_window is not None and (not self.rolling or self.rolling_window < 1):
            raise InputError(f"`rolling_window` needs `rolling` and at least 1 token, got {self.rolling_window}")
        if self.rolling and self.stride is not None:
            raise InputError("`rolling` and `stride` are two window protocols for long text; pick one")
        if self.rolling and self.tokenization == "trl":
            raise InputError("`rolling` is lm-eval's own tokenization of a text; drop `tokenization` trl")


def check_chat_layout(layout: Layout) -> None:
    """Options that only make sense for a prompt/answer pair, rejected for a chat rendering."""
    if layout.sep:
        raise InputError("`sep` does not apply with a chat template, which places its own separators; drop `sep`")
    if layout.tokenization != "separate":
        raise InputError(
            f"`tokenization` {layout.tokenization} applies to prompt/answer pairs; a chat template is rendered and "
            "tokenized as one string (its answer boundary is checked instead); drop `tokenization`"
        )
    if layout.special_tokens != "parse":
        raise InputError(
            f"`special_tokens` {layout.special_tokens} applies to prompt/answer pairs: a chat template's rendering is "
            "tokenized as one string, where special-token text in a message cannot be told from the template's own "
            "markers; drop `special_tokens` (a note names any special-token text the messages contain)"
        )
    if layout.truncate_prompt:
        raise InputError(
            "`truncate_prompt` cannot cut a chat conversation without breaking its template; shorten the conversation"
        )
