"""How far a batched figure may lie from the same example scored alone: float32 rounding, whatever the BLAS.

A batch sums the same products as one example alone, in another order: the BLAS picks its kernel and
how it splits a sum from the shape of the call (how many rows share it, and on several threads how they
are divided), and the attention kernel runs over the padded length. The figures then differ by rounding
only, and ``loss_tolerance`` bounds that difference for one token's loss from the model's widths, its
depth and the size of its logits:

1. A dot product of width ``n`` in float32 (unit roundoff ``u = 2**-24``) is off by at most
   ``lambda * sqrt(n) * u`` relative to its terms, with probability at least ``1 - 2 exp(-lambda**2 / 2)``,
   when its rounding errors are independent and of mean zero (the probabilistic rounding-error analysis
   of Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019). The worst case, ``n * u``, assumes every
   rounding goes the same way; real kernels, summing in SIMD lanes and blocks, never approach it.
2. Along one token's path the roundings are those of every dot product on it: per layer the q/k/v,
   output, gate and up projections (width ``hidden`` each), the attention scores (``head_dim``), the
   softmax-weighted sum of values (the padded length) and the down projection (``intermediate``); then
   the output head (``hidden``). Independent errors add in quadrature, and normalised residual layers
   pass a relative error on without growing it, so the last hidden state, and a logit ``z_v``, is off by
   at most ``lambda * sqrt(N) * u`` relative, ``N`` the sum of those widths over the ``layers``; two
   summation orders (a batch and the example alone) by twice that.
3. A token's loss ``logsumexp(z) - z_y`` moves by at most twice the largest logit change (logsumexp moves
   by at most the largest change), which is the relative error of 2. times ``max |z|`` (``logit_scale``).
   Soft-capping (``tanh``) only shrinks changes. A mean of token losses moves by at most the same bound.

With ``lambda = 5`` this gives 1.9e-2 nats for SmolLM2-135M (30 layers of 576 and 1536, logits up to 40)
against 2.1e-5 measured on an AMD EPYC, and 1.1e-4 to 2.6e-4 for the tests' 2-layer models against at most
3e-6
(``bench/batch_numerics.py``, ``bench/results/batch-numerics.md``). The worst case of 1. with errors adding
across layers would allow several nats on SmolLM2: true, and useless. The bound is an estimate of
rounding under those assumptions, not a theorem about every network: a badly conditioned model can
amplify a rounding difference beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

UNIT_ROUNDOFF = 2.0**-24  # float32
# The factor of step 1: the probabilistic bound holds with probability at least 1 - 2 exp(-LAMBDA**2 / 2),
# 1 - 7.5e-6 for 5.
LAMBDA = 5.0


@dataclass(frozen=True)
class Widths:
    """The widths of the dot products on a token's path through the model, and its depth."""

    hidden: int
    intermediate: int
    head_dim: int
    layers: int

    @classmethod
    def of(cls, config: Any) -> Widths:
        """Read from a transformers config (Llama, Gemma, GPT-2 and the like; a multimodal one's text part)."""
        get = getattr(config, "get_text_config", None)
        config = get() if callable(get) else config
        hidden = int(config.hidden_size)
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(hidden, int(intermediate), int(head_dim), int(config.num_hidden_layers))


def relative_error(widths: Widths, positions: int) -> float:
    """Steps 1-2: the relative difference of a logit between two summation orders of a forward pass."""
    d, i, h = widths.hidden, widths.intermediate, widths.head_dim
    roundings = widths.layers * (6 * d + h + max(positions, 1) + i) + d
    return 2 * LAMBDA * math.sqrt(roundings) * UNIT_ROUNDOFF


def loss_tolerance(config: Any, logit_scale: float, positions: int) -> float:
    """Step 3: how far one token's loss (nats), or a mean of token losses, may move between a batch and
    the example alone. ``logit_scale`` is the largest ``|logit|`` of the examples (``logit_scale``
    computes it), ``positions`` the longest padded length they ran at."""
    return 2 * relative_error(Widths.of(config), positions) * logit_scale


def logit_scale(lm: Any, examples: Sequence[Any]) -> float:
    """The largest ``|logit|`` the model gives the ``examples`` (``Encoded``), each run once alone."""
    import torch

    device = lm.model.get_input_embeddings().weight.device
    scale = 0.0
    with torch.no_grad():
        for example in examples:
            logits = lm.model(torch.tensor([list(example.input_ids)], device=device)).logits
            scale = max(scale, float(logits.detach().float().abs().max()))
    return scale
