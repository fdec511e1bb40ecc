"""The Hugging Face forward pass: the model's body run once, its output head only at the scored positions.

Memory: the model runs once, without a KV cache, and its output head runs only at the positions whose
logits are scored: inside the model's own forward when they fit in one chunk, else ``chunk`` rows at a
time on the hidden states the head would see. Either way the float32 (rows x vocab) working set is
bounded by ``ScoreOptions.chunk_bytes`` whatever the prompt and answer lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import ModelLoadError
from ce_inspect.scoring.options import ScoreOptions
from ce_inspect.text import Encoded

if TYPE_CHECKING:
    import torch

    from ce_inspect.model import LoadedModel

log = logging.getLogger("ce_inspect")


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


def vocab_size(model: Any) -> int:
    output = model.get_output_embeddings()
    weight = getattr(output, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(_text_config(model).vocab_size)


class SharedStart:
    """The first ``length`` tokens that every example of a batch shares, run once: the model's KV cache of
    them, copied afresh for each forward pass over what follows (a pass adds its own tokens to the cache)."""

    def __init__(self, lm: LoadedModel, ids: Sequence[int]) -> None:
        import torch

        model = lm.model
        inputs = {"input_ids": torch.tensor([list(ids)], device=_input_device(model)), "use_cache": True}
        try:
            out = model(**inputs, logits_to_keep=1)
        except TypeError as exc:
            if "logits_to_keep" not in str(exc):
                raise
            out = model(**inputs)
        self.length = len(ids)
        self.keyword = cache_keyword(model)
        self.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if self.cache is None or not callable(getattr(self.cache, "batch_repeat_interleave", None)):
            raise ModelLoadError("the model returned no KV cache to share a start from")

    def fresh(self, batch: int) -> Any:
        """A copy of the cache for a batch of ``batch`` rows."""
        import copy

        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache


def cache_keyword(model: Any) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers 5.2x on), else
    ``past_key_values``."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _call(model: Any, inputs: dict[str, Any], columns: torch.Tensor) -> Any:
    """The model's own forward, asking it to run its head only at ``columns`` where it supports that."""
    start = inputs.get("shared_start")
    if isinstance(start, SharedStart):  # each call extends its own copy of the shared start's cache
        inputs = {k: v for k, v in inputs.items() if k != "shared_start"}
        inputs[start.keyword] = start.fresh(inputs["input_ids"].shape[0])
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
    start: SharedStart | None = None,
) -> tuple[torch.Tensor, Any, int]:
    """Run the model's body once; return ``(selected, head, rows)``: ``head(selected[i:j])`` is the logits
    [j - i, vocab] of scored targets i..j-1 (in ``rows_b``/``rows_t`` order), to be taken ``rows`` at a time.

    ``selected`` is [n_scored, hidden] (the head's input) or, when the model projected them itself,
    [n_scored, vocab] logits with ``head`` the identity. ``HFScorer`` runs every command's pass through this step.
    With ``start``, the batch is what follows a shared start already run (``packer.pack_after``'s layout).
    """
    import torch

    model = lm.model
    device = _input_device(model)
    inputs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "use_cache": start is not None,  # without a shared start, a KV cache is memory that scoring never reads
    }
    if start is not None:
        inputs["shared_start"] = start
    if not bool(attention.all()) and not (_right_padded(attention) and _unmasked_padding_ok(lm, input_ids, attention)):
        if start is not None:  # the mask covers the shared start's positions too
            attention = torch.cat([torch.ones((attention.shape[0], start.length), dtype=attention.dtype), attention], 1)
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
    rows = options.rows_per_chunk(vocab_size(model))
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
