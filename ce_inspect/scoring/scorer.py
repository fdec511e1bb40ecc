"""Forward pass -> per-token figures. The only module that does tensor math on logits.

The loss is the one a causal-LM training step computes: the logits at position ``t`` predict the
token at ``t + 1`` (shift by one), positions whose label is ``ignore_index`` contribute nothing, and
``mean`` is the token-level mean over scored targets, as ``torch.nn.CrossEntropyLoss`` returns it.

Memory: the model runs once, without a KV cache, and its output head runs only at the positions whose
logits are scored: inside the model's own forward when they fit in one chunk, else ``chunk`` rows at a
time on the hidden states the head would see. Either way the float32 (rows x vocab) working set is
bounded by ``ScoreOptions.chunk_bytes`` whatever the prompt and answer lengths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from ce_inspect.contract import Alternative, ScoreResult, SequenceToken, Summary, TokenScore, TurnSummary
from ce_inspect.errors import InputError, ModelLoadError, NonFiniteError
from ce_inspect.model import check_model_unchanged
from ce_inspect.text import Encoded, Layout, byte_hex, decode_tokens, encode, encode_messages, special_ids

if TYPE_CHECKING:
    import torch

    from ce_inspect.model import LoadedModel

log = logging.getLogger("ce_inspect")

REDUCTIONS = ("mean", "sum", "none")
#: Bytes of float32 (rows x vocab) scratch the head may use at once; about 3 such buffers are live.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def check_reduction(reduction: str) -> None:
    """The one check of a reduction name, for the library, ``run`` and ``batch`` alike."""
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown `reduction` {reduction!r}; use {', '.join(REDUCTIONS[:-1])} or {REDUCTIONS[-1]}")


@dataclass(frozen=True)
class ScoreOptions:
    reduction: str = "mean"
    label_smoothing: float = 0.0
    top_k: int = 0
    verify: bool = False
    chunk_tokens: int | None = None  # head rows per chunk; None: derived from chunk_bytes and the vocab
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        check_reduction(self.reduction)
        if math.isnan(self.label_smoothing) or math.isinf(self.label_smoothing):
            what = "not a number" if math.isnan(self.label_smoothing) else "infinite"
            raise InputError(f"`label_smoothing` must be a number in [0, 1], got {self.label_smoothing} ({what})")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise InputError(f"`label_smoothing` must be in [0, 1], got {self.label_smoothing}")
        if self.top_k < 0:
            raise InputError(f"`top_k` must be 0 or more, got {self.top_k}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise InputError(f"`chunk_tokens` must be at least 1, got {self.chunk_tokens}")

    def rows_per_chunk(self, vocab_size: int) -> int:
        if self.chunk_tokens is not None:
            return self.chunk_tokens
        return max(1, self.chunk_bytes // (3 * 4 * max(vocab_size, 1)))


# --- per-token math on logits --------------------------------------------------------------------------


def token_figures(
    logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0, top_k: int = 0
) -> dict[str, torch.Tensor]:
    """Per-row figures for ``logits`` [n, vocab] (any dtype) and class-index ``targets`` [n].

    The log-softmax runs in float32 whatever the model's dtype. With label smoothing ε the loss is
    ``(1-ε)·(-log p_target) + ε·mean_j(-log p_j)``, which is what CrossEntropyLoss computes.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # [n, vocab]
    target_logp = logp.gather(1, targets[:, None]).squeeze(1)  # [n]
    loss = -target_logp
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp.mean(dim=-1)
    # [n]; ties count in the target's favour. An int32 sum is twice as fast as the default int64 on CPU.
    rank = (logp > target_logp[:, None]).sum(dim=-1, dtype=torch.int32) + 1
    top_logp, top_ids = logp.topk(max(top_k, 1), dim=-1)  # [n, k]
    return {"logprob": target_logp, "loss": loss, "rank": rank, "top_logp": top_logp, "top_ids": top_ids}


def nonfinite_row(
    logits: torch.Tensor, targets: torch.Tensor, figures: dict[str, torch.Tensor]
) -> tuple[int, str] | None:
    """The first row of ``logits`` [n, vocab] whose ``token_figures`` are not all finite, and why; None if none.

    One NaN or +inf logit anywhere in a row makes the row's whole log-softmax NaN, so the target's
    log-probability and loss catch it without another pass over the vocabulary. A -inf logit is a
    probability of 0, which is legitimate (models mask padded vocabulary entries that way) unless it is
    the target's, or label smoothing averages it into the loss. Top-k probabilities and ranks are finite
    whenever the target's log-probability is.
    """
    import torch

    ok = torch.isfinite(figures["logprob"]) & torch.isfinite(figures["loss"])  # [n]
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0, 0])
    row = logits[i]  # [vocab]
    if bool(torch.isnan(row).any()):
        return i, "nan"
    if bool(torch.isposinf(row).any()):
        return i, "+inf"
    if bool(torch.isneginf(row[targets[i]])):
        return i, "zero"
    if bool(torch.isneginf(row).any()) and bool(torch.isfinite(figures["logprob"][i])):
        return i, "smoothing"
    return i, "overflow"  # finite logits so far apart that float32's log-softmax overflows


def nonfinite_error(
    tokenizer: Any,
    examples: Sequence[Encoded],
    row: int,
    why: str,
    *,
    target: int,
    dtype: str,
    label_smoothing: float,
    whose: str = "the model",
    dtype_param: str = "dtype",
) -> NonFiniteError:
    """The one error for a scored token whose figures are not finite: ``row`` counts the scored targets of
    ``examples`` in order, ``why`` is what ``nonfinite_row`` found, ``whose`` names the model."""
    example = examples[0]
    for example in examples:
        if row < len(example.scored_positions):
            break
        row -= len(example.scored_positions)
    (text,) = decode_tokens(tokenizer, [target])
    where = f"scored token {row + 1} of {len(example.scored_positions)} (target {text!r})"
    if why in ("kl", "kl_reverse"):
        p, q = ("reference", "candidate") if why == "kl" else ("candidate", "reference")
        message = (
            f"{'KL(ref‖cand)' if why == 'kl' else 'KL(cand‖ref)'} is infinite at {where}: the {q} model gives "
            f"probability 0 (a logit of -inf) to a token the {p} model does not"
        )
    elif why == "zero":
        message = f"{whose} gives {where} probability 0 (its logit is -inf), so its loss is infinite"
    elif why == "smoothing":
        message = (
            f"with `label_smoothing` {label_smoothing:g} the loss of {where} is infinite: {whose} gives some "
            "vocabulary entries a logit of -inf (probability 0), and label smoothing averages -log p over every "
            "entry, as CrossEntropyLoss does"
        )
    else:
        cause = f"its weights hold NaN or inf, or its computation overflows {dtype}"
        if dtype == "float16":
            cause += f" (try `{dtype_param}` bfloat16 or float32)"
        elif dtype != "float32":
            cause += f" (try `{dtype_param}` float32)"
        if why in ("nan", "+inf"):
            message = f"{whose}'s logits are not finite ({'NaN' if why == 'nan' else why}) at {where}: {cause}"
        else:
            message = f"{whose}'s logits at {where} are too far apart for a float32 log-softmax: {cause}"
    return NonFiniteError(message, example=example, scored=row, why=why, target=target)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.CrossEntropyLoss`` on [N, vocab] logits and [N] labels, computed by ce-inspect's own code.

    This is the reduction the tool reports; tests hold it to torch's implementation.
    """
    import torch

    check_reduction(reduction)
    keep = labels != ignore_index  # [N]
    losses = token_figures(logits[keep], labels[keep], label_smoothing=label_smoothing)["loss"]
    if reduction == "none":
        out = torch.zeros(labels.shape, dtype=losses.dtype, device=losses.device)
        out[keep] = losses
        return out
    total = losses.sum()
    return total if reduction == "sum" else total / keep.sum()


# --- the model path ------------------------------------------------------------------------------------


def score(
    lm: LoadedModel,
    prompt: str,
    answer: str,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
) -> ScoreResult:
    """Encode a prompt/answer pair with ``layout`` and score it: the library's one-call entry point."""
    example = encode(lm.tokenizer, prompt, answer, layout or Layout(), max_length=lm.context_length)
    return score_encoded(lm, example, options)


def score_messages(
    lm: LoadedModel,
    messages: Sequence[dict[str, Any]] | dict[str, Any],
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    last_turn: bool = False,
) -> ScoreResult:
    """Render a conversation with the model's chat template and score its assistant turns (or the last one)."""
    example = encode_messages(
        lm.tokenizer, messages, layout or Layout(), max_length=lm.context_length, last_turn=last_turn
    )
    return score_encoded(lm, example, options)


def score_encoded(lm: LoadedModel, example: Encoded, options: ScoreOptions | None = None) -> ScoreResult:
    """Score one encoded example with one forward pass."""
    return score_batch(lm, [example], options)[0]


class Packed(NamedTuple):
    """Examples laid out for one forward pass, and what it scores: each scored target's row, the column of
    the logits that predict it, and its id (the example's label there)."""

    input_ids: torch.Tensor  # [batch, seq], padding where ``attention`` is 0
    attention: torch.Tensor  # [batch, seq]
    position_ids: torch.Tensor  # [batch, seq], from the mask: left and right padding give the same positions
    rows_b: list[int]  # batch row of each scored target
    rows_t: list[int]  # column of the logits that predict it (the target sits at column + 1)
    targets: list[int]  # its id: the label, as in training (== the input id unless the record gives labels)


def pack(lm: LoadedModel, examples: Sequence[Encoded], *, padding_side: str = "right") -> Packed:
    """The one packer: every command that scores examples (``score_batch``, ``diff``) lays them out here,
    so all of them score the same targets at the same positions."""
    import torch

    if padding_side not in ("left", "right"):
        raise InputError(f"padding side must be left or right, got {padding_side!r}")
    for example in examples:
        if not example.scored_positions:
            raise InputError("the example has no scored position (every label is ignore_index)")
    tokenizer = lm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [batch, seq]
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # [batch, seq]
    rows_b: list[int] = []
    rows_t: list[int] = []
    targets: list[int] = []
    for b, example in enumerate(examples):
        n = len(example)
        offset = width - n if padding_side == "left" else 0
        input_ids[b, offset : offset + n] = torch.tensor(example.input_ids)
        attention[b, offset : offset + n] = 1
        for p in example.scored_positions:
            rows_b.append(b)
            rows_t.append(offset + p - 1)  # the logits at p - 1 predict the token at p
            targets.append(example.labels[p])  # the label is the target, as in training (== the id unless given)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # [batch, seq]
    return Packed(input_ids, attention, position_ids, rows_b, rows_t, targets)


def score_batch(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    options: ScoreOptions | None = None,
    *,
    padding_side: str = "right",
) -> list[ScoreResult]:
    """Score several examples in one padded forward pass; each result equals scoring it alone.

    Position ids are derived from the attention mask, so left and right padding give the same figures.
    """
    import torch

    options = options or ScoreOptions()
    if not examples:
        return []
    packed = pack(lm, examples, padding_side=padding_side)
    input_ids, attention, position_ids = packed.input_ids, packed.attention, packed.position_ids
    rows_b, rows_t, targets = packed.rows_b, packed.rows_t, packed.targets

    options, top_k_note = _fit_top_k(lm, options)
    with torch.inference_mode():
        figures = _figures(lm, examples, input_ids, attention, position_ids, rows_b, rows_t, targets, options)
        model_losses = own_losses(lm, examples) if options.verify else [None] * len(examples)
    check_model_unchanged(lm)  # the pass read the weights from their files: were they the loaded ones?

    results = build_results(lm, examples, figures, model_losses, options)
    if top_k_note:
        results = [replace(r, notes=(*r.notes, top_k_note)) for r in results]
    return results


def top_k_note(lm: LoadedModel, options: ScoreOptions) -> str | None:
    """The note every result carries when ``top_k`` is more than the vocabulary (the width of the logits)."""
    vocab = _vocab_size(lm.model)
    if options.top_k <= vocab:
        return None
    return f"top-k {options.top_k} is more than the model's vocabulary of {vocab} tokens; showing all {vocab} (--top-k)"


def _fit_top_k(lm: LoadedModel, options: ScoreOptions) -> tuple[ScoreOptions, str | None]:
    """``top_k`` clamped to the vocabulary, with the note that says so (None when it fits)."""
    note = top_k_note(lm, options)
    if note is None:
        return options, None
    return replace(options, top_k=_vocab_size(lm.model)), note


def _input_device(model: Any) -> Any:
    return model.get_input_embeddings().weight.device


def _text_config(model: Any) -> Any:
    config = model.config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _head(model: Any) -> Any:
    """The output head as a function of hidden states, or None when it is not a plain Linear layer.

    Reproduces the post-processing some architectures apply to logits (Gemma's soft-capping, Cohere's
    logit scale, Granite's logit divisor); ``_forward`` checks the result against the model's own logits.
    """
    import torch

    output = model.get_output_embeddings()
    if not isinstance(output, torch.nn.Linear):
        return None
    config = _text_config(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab]
        device = output.weight.device
        # Under --device-map the weight may be offloaded (meta); accelerate's hook then moves the input itself.
        logits = output(hidden if device.type == "meta" else hidden.to(device))
        if scale:
            logits = logits * scale
        if divisor:
            logits = logits / divisor
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return head


def _vocab_size(model: Any) -> int:
    output = model.get_output_embeddings()
    weight = getattr(output, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(_text_config(model).vocab_size)


def _call(model: Any, inputs: dict[str, Any], columns: torch.Tensor) -> Any:
    """The model's own forward, asking it to run its head only at ``columns`` where it supports that."""
    try:
        return model(**inputs, logits_to_keep=columns)
    except TypeError as exc:
        if "logits_to_keep" not in str(exc):
            raise
        return model(**inputs)  # older or custom models: the head runs at every position


def _at_columns(states: torch.Tensor, columns: torch.Tensor, seq_len: int) -> torch.Tensor | None:
    """``states`` [batch, n, d] restricted to ``columns``: n is len(columns) when the model honoured
    ``logits_to_keep`` and seq_len when it did not (len(columns) < seq_len: the last position is never scored)."""
    if states.dim() != 3:
        return None
    if states.shape[1] == columns.numel():
        return states
    if states.shape[1] == seq_len:
        return states[:, columns.to(states.device)]
    return None


def _own_logits(logits: torch.Tensor, columns: torch.Tensor, seq_len: int) -> torch.Tensor:
    at = _at_columns(logits, columns, seq_len)
    if at is None:
        raise ModelLoadError(
            f"the model returned logits of shape {tuple(logits.shape)}, not [batch, positions, vocab]; "
            "ce-inspect cannot score it"
        )
    return at


def _warn_fallback(lm: LoadedModel) -> None:
    if lm.fast_head is not False:
        log.warning(
            "This model's output head is not a plain projection of its hidden states; scoring with the "
            "model's own logits at the scored positions (more memory on long answers, same figures)."
        )
    lm.fast_head = False


def _forward(
    lm: LoadedModel, inputs: dict[str, Any], columns: torch.Tensor, probe: torch.Tensor, max_rows: int
) -> tuple[Any, Any]:
    """One forward pass. Returns ``(None, logits)`` [batch, n_columns, vocab], the model's own logits at
    ``columns``, when they fit in one chunk of ``max_rows`` rows (or as the fallback); else ``(states,
    None)``, the hidden states the output head would see at ``columns`` [batch, n_columns, hidden], for
    ``_head`` to project chunk by chunk, once it is shown to reproduce the model's logits.

    A pre-hook on the output head sees its input. Few rows: the model projects them itself, in the one
    weight pass a head needs. More: the hook keeps them and lets the model project only two per example,
    ``probe`` [batch, 2] (indices into ``columns`` of scored positions, never padding), with whatever
    post-processing its forward applies, and ``_head`` must reproduce those logits. So an unknown head or
    post-processing step costs memory (the fallback), never a wrong figure.
    """
    import torch

    model = lm.model
    seq_len = inputs["input_ids"].shape[1]
    head = _head(model) if lm.fast_head is not False else None
    if head is None:
        _warn_fallback(lm)
        return None, _own_logits(_call(model, inputs, columns).logits, columns, seq_len)

    kept: dict[str, Any] = {}

    def keep_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        states = args[0] if args else kwargs.get("input")
        if kept or not isinstance(states, torch.Tensor) or states.dim() != 3:
            return None  # a second call, or an unexpected shape: leave it alone (the check then fails)
        kept["states"] = states
        if states.shape[0] * states.shape[1] <= max_rows:
            kept["whole"] = True
            return None  # the model projects every row itself
        at = probe if states.shape[1] == columns.numel() else columns[probe]  # [batch, 2] along dim 1
        at = at.to(states.device)
        rows = states[torch.arange(states.shape[0], device=states.device)[:, None], at]  # [batch, 2, hidden]
        kept["probe"] = rows
        if args:
            return (rows, *args[1:]), kwargs
        return args, {**kwargs, "input": rows}

    handle = model.get_output_embeddings().register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        logits = _call(model, inputs, columns).logits  # [batch, 2, vocab] when the hook ran
    finally:
        handle.remove()

    states = kept.get("states")
    if states is None:  # the head module never ran: the model's logits are the full ones
        _warn_fallback(lm)
        return None, _own_logits(logits, columns, seq_len)
    if kept.get("whole"):
        return None, _own_logits(logits, columns, seq_len)
    ok = False
    try:
        own = logits.float()  # [batch, 2, vocab]
        rows = kept["probe"]
        ours = head(rows.reshape(-1, rows.shape[-1])).float().reshape(own.shape).to(own.device)
        exact = own.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
        ok = _same_logits(ours, own, exact=exact)
    except Exception as exc:  # noqa: BLE001 - any surprise means: use the model's own path
        log.debug("output head check failed: %s", exc)
    states = _at_columns(states, columns, seq_len) if ok else None
    if states is None:
        _warn_fallback(lm)
        return None, _own_logits(_call(model, inputs, columns).logits, columns, seq_len)
    lm.fast_head = True
    return states, None


def scored_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    position_ids: torch.Tensor,
    rows_b: list[int],
    rows_t: list[int],
    options: ScoreOptions,
) -> tuple[torch.Tensor, Any, int]:
    """Run the model's body once; return ``(selected, head, rows)``: ``head(selected[i:j])`` is the logits
    [j - i, vocab] of scored targets i..j-1 (in ``rows_b``/``rows_t`` order), to be taken ``rows`` at a time.

    ``selected`` is [n_scored, hidden] (the head's input) or, when the model projected them itself,
    [n_scored, vocab] logits with ``head`` the identity. ``diff`` runs two models through this same step.
    """
    import torch

    model = lm.model
    device = _input_device(model)
    inputs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "use_cache": False,  # a KV cache is memory that scoring never reads
    }
    if not bool(attention.all()) and not (_right_padded(attention) and _unmasked_padding_ok(lm, input_ids, attention)):
        inputs["attention_mask"] = attention.to(device)
        inputs["position_ids"] = position_ids.to(device)
    # Without padding, or with padding only after each example's tokens (which a causal model's real
    # positions never attend to), the model's defaults are the same positions and mask, and SDPA can then
    # use its is_causal kernel without materialising a [batch, seq, seq] mask: 1.7x faster on 4 x 1,427
    # tokens of SmolLM2 on CPU, and bit for bit the same hidden states.
    index_b = torch.tensor(rows_b)
    index_t = torch.tensor(rows_t)
    columns = torch.unique(index_t)  # sorted: the logit columns some scored target needs
    index_c = torch.searchsorted(columns, index_t)  # [n_scored]: each target's column among them
    # Per example, the columns of its first and last scored target: where the head check looks.
    probe = torch.stack(
        [torch.stack([index_c[index_b == b].min(), index_c[index_b == b].max()]) for b in range(input_ids.shape[0])]
    )  # [batch, 2]
    rows = options.rows_per_chunk(_vocab_size(model))
    states, logits = _forward(lm, inputs, columns.to(device), probe, rows)
    if states is not None:
        head = _head(model)
        selected = states[index_b.to(states.device), index_c.to(states.device)]  # [n_scored, hidden]
    else:
        selected = logits[index_b.to(logits.device), index_c.to(logits.device)]  # [n_scored, vocab]

        def head(given: torch.Tensor) -> torch.Tensor:
            return given

    return selected, head, rows


def _same_logits(got: torch.Tensor, want: torch.Tensor, *, exact: bool, equal_nan: bool = False) -> bool:
    """Whether two blocks of logits agree: 1e-4 (float32 throughout) or 2e-2 (a lower precision somewhere),
    relative and scaled by the largest finite logit of ``want`` (a -inf, masked, logit would make any
    tolerance pass)."""
    import torch

    tol = 1e-4 if exact else 2e-2
    finite = want[torch.isfinite(want)].abs()
    scale = max(1.0, finite.max().item()) if finite.numel() else 1.0
    return bool(torch.allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=equal_nan))


def _right_padded(attention: torch.Tensor) -> bool:
    """Whether every row of the [batch, seq] mask is its tokens first, then only padding."""
    import torch

    lengths = attention.sum(-1, keepdim=True)  # [batch, 1]
    return bool((attention.bool() == (torch.arange(attention.shape[1]) < lengths)).all())


#: Tokens of the probe ``_unmasked_padding_ok`` runs (and of padding after them).
PROBE_TOKENS, PROBE_PADDING = 16, 8


def _unmasked_padding_ok(lm: LoadedModel, input_ids: torch.Tensor, attention: torch.Tensor) -> bool:
    """Whether right padding can go unmasked for this model: checked once per model, on a small probe (the
    batch's first tokens, alone and followed by unmasked padding), since a model whose real positions see
    later tokens (a prefix-LM, custom code) would give other figures. Costs two forward passes of 24 tokens."""
    import torch

    if lm.unmasked_padding is None:
        lm.unmasked_padding = False
        try:
            model, device = lm.model, _input_device(lm.model)
            n = min(int(attention[0].sum()), PROBE_TOKENS)
            pad = input_ids[attention == 0][:1].repeat(PROBE_PADDING)  # the batch's own padding token
            alone = input_ids[0, :n][None].to(device)  # [1, n]
            padded = torch.cat([input_ids[0, :n], pad])[None].to(device)  # [1, n + 8]
            want = model(input_ids=alone, use_cache=False).logits[0].float()  # [n, vocab]
            got = model(input_ids=padded, use_cache=False).logits[0, :n].float()  # [n, vocab]
            exact = next(model.parameters()).dtype == torch.float32
            lm.unmasked_padding = _same_logits(got, want, exact=exact, equal_nan=True)
        except Exception as exc:  # noqa: BLE001 - any surprise means: keep the mask
            log.debug("unmasked padding check failed: %s", exc)
        if not lm.unmasked_padding:
            log.debug("%s: right padding is masked (its real positions see the padding after them)", lm.name)
    return lm.unmasked_padding


def _figures(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    position_ids: torch.Tensor,
    rows_b: list[int],
    rows_t: list[int],
    targets: list[int],
    options: ScoreOptions,
) -> dict[str, list[Any]]:
    import torch

    selected, head, rows = scored_rows(lm, input_ids, attention, position_ids, rows_b, rows_t, options)
    target_tensor = torch.tensor(targets)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, selected.shape[0], rows):
        chunk_logits = head(selected[start : start + rows])  # [rows, vocab]
        chunk = token_figures(
            chunk_logits,
            target_tensor[start : start + rows].to(chunk_logits.device),
            label_smoothing=options.label_smoothing,
            top_k=options.top_k,
        )
        bad = nonfinite_row(chunk_logits, target_tensor[start : start + rows], chunk)
        if bad is not None:
            row = start + bad[0]
            raise nonfinite_error(
                lm.tokenizer,
                examples,
                row,
                bad[1],
                target=targets[row],
                dtype=lm.dtype,
                label_smoothing=options.label_smoothing,
            )
        for key, value in chunk.items():
            parts.setdefault(key, []).append(value.cpu())
        del chunk_logits, chunk
    out = {key: torch.cat(values).tolist() for key, values in parts.items()}
    out["target"] = targets
    return out


def own_losses(lm: LoadedModel, examples: Sequence[Encoded]) -> list[float]:
    """The model's own ``loss`` (its CrossEntropyLoss path), one example at a time."""
    import torch

    device = _input_device(lm.model)
    losses = []
    for example in examples:
        ids = torch.tensor([example.input_ids], device=device)
        # The model's loss always ignores -100, whatever ignore_index the user chose for display.
        labels = torch.tensor([[t if t != example.ignore_index else -100 for t in example.labels]], device=device)
        losses.append(float(lm.model(input_ids=ids, labels=labels, use_cache=False).loss))
    return losses


def build_results(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    figures: dict[str, list[Any]],
    model_losses: Sequence[float | None],
    options: ScoreOptions,
) -> list[ScoreResult]:
    """One result per example from the batch's flat figure lists, in one pass over them (linear in tokens)."""
    special = special_ids(lm.tokenizer)
    text = _texts(lm.tokenizer, examples, figures["top_ids"], figures["target"])
    raw = {i: byte_hex(lm.tokenizer, i, t) for i, t in text.items()}  # bytes of ids that do not decode alone
    results = []
    cursor = 0
    for example, model_loss in zip(examples, model_losses):
        n = len(example.scored_positions)
        rows = {key: values[cursor : cursor + n] for key, values in figures.items()}  # this example's figures
        cursor += n
        tokens = _token_scores(lm.tokenizer, example, rows, text, raw, options, special)
        loss_at = {t.index: t.loss for t in tokens}
        layout = dict(example.layout)
        layout.update({"sequence_tokens": len(example), "scored_tokens": len(tokens)})
        results.append(
            ScoreResult(
                model=lm.name,
                device=lm.device,
                dtype=lm.dtype,
                tokens=tuple(tokens),
                summary=_summary(example, tokens, loss_at, model_loss, options),
                sequence=_sequence(example, text, raw, loss_at, special),
                layout=layout,
                notes=example.notes,
                turns=turn_summaries(tokens, example.turn_roles) if example.turns else (),
            )
        )
    return results


def _texts(tokenizer: Any, examples: Sequence[Encoded], top_ids: list[list[int]], targets: list[int]) -> dict[int, str]:
    """The text of every id the batch's results show, each distinct id decoded once."""
    ids = sorted({i for e in examples for i in e.input_ids} | {i for row in top_ids for i in row} | set(targets))
    return dict(zip(ids, decode_tokens(tokenizer, ids)))


def _token_scores(
    tokenizer: Any,
    example: Encoded,
    rows: dict[str, list[Any]],
    text: dict[int, str],
    raw: dict[int, str | None],
    options: ScoreOptions,
    special: set[int],
) -> list[TokenScore]:
    """The scored tokens of one example; ``rows`` holds its figures, one entry per scored position."""
    target_ids = rows["target"]
    top_ids, top_logps = rows["top_ids"], rows["top_logp"]
    pieces = tokenizer.convert_ids_to_tokens(target_ids)
    tokens = []
    for j, position in enumerate(example.scored_positions):
        logprob = rows["logprob"][j]
        tokens.append(
            TokenScore(
                index=position,
                token_id=target_ids[j],
                token=text[target_ids[j]],
                piece=str(pieces[j]),
                segment=example.segments[position],
                special=target_ids[j] in special,
                prob=math.exp(logprob),
                logprob=logprob,
                loss=rows["loss"][j],
                rank=int(rows["rank"][j]),
                top_id=top_ids[j][0],
                top_token=text[top_ids[j][0]],
                top_prob=math.exp(top_logps[j][0]),
                top_k=_alternatives(top_ids[j], top_logps[j], text, raw, options.top_k),
                turn=example.turns[position] if example.turns else None,
                bytes=raw[target_ids[j]],
                top_bytes=raw[top_ids[j][0]],
            )
        )
    return tokens


def _alternatives(
    ids: list[int], logps: list[float], text: dict[int, str], raw: dict[int, str | None], k: int
) -> tuple[Alternative, ...]:
    return tuple(
        Alternative(token_id=i, token=text[i], prob=math.exp(lp), bytes=raw[i]) for i, lp in zip(ids[:k], logps[:k])
    )


def _summary(
    example: Encoded,
    tokens: Sequence[TokenScore],
    loss_at: dict[int, float],
    model_loss: float | None,
    options: ScoreOptions,
) -> Summary:
    total = math.fsum(t.loss for t in tokens)
    sum_logprob = math.fsum(t.logprob for t in tokens)
    mean_nll = -sum_logprob / len(tokens)
    return Summary(
        reduction=options.reduction,
        mean=total / len(tokens),
        sum=total,
        count=len(tokens),
        mean_nll=mean_nll,
        label_smoothing=options.label_smoothing,
        ignore_index=example.ignore_index,
        greedy_hits=sum(t.is_greedy for t in tokens),
        model_loss=model_loss,
        verify_abs_diff=None if model_loss is None else abs(model_loss - mean_nll),
        # CrossEntropyLoss(reduction="none") over the shifted sequence: 0 where the label is ignored.
        per_token=tuple(loss_at.get(i, 0.0) for i in range(1, len(example))),
        sum_logprob=sum_logprob,
    )


def _sequence(
    example: Encoded, text: dict[int, str], raw: dict[int, str | None], loss_at: dict[int, float], special: set[int]
) -> tuple[SequenceToken, ...]:
    """Every token of the example, scored or not: the whole-sequence view."""
    return tuple(
        SequenceToken(
            index=i,
            token_id=tid,
            token=text[tid],
            segment=example.segments[i],
            scored=i in loss_at,
            loss=loss_at.get(i),
            special=tid in special,
            turn=example.turns[i] if example.turns else None,
            bytes=raw[tid],
        )
        for i, tid in enumerate(example.input_ids)
    )


def turn_summaries(tokens: Sequence[TokenScore], roles: Sequence[str]) -> tuple[TurnSummary, ...]:
    """Per-turn figures over the scored tokens, turns in the order they appear."""
    groups: dict[int | None, list[TokenScore]] = {}
    for t in tokens:
        groups.setdefault(t.turn, []).append(t)
    out = []
    for turn, group in groups.items():
        total = math.fsum(t.loss for t in group)
        sum_logprob = math.fsum(t.logprob for t in group)
        out.append(
            TurnSummary(
                turn=turn,
                role=roles[turn] if turn is not None and turn < len(roles) else "template",
                count=len(group),
                mean=total / len(group),
                sum=total,
                mean_nll=-sum_logprob / len(group),
                sum_logprob=sum_logprob,
                greedy_hits=sum(t.is_greedy for t in group),
                first_index=group[0].index,
                last_index=group[-1].index,
            )
        )
    return tuple(out)
