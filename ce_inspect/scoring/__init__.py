"""The scorer: one contract (``Scorer``) and its Hugging Face implementation, every per-token figure, the packer
every command uses, sliding windows.

The modules: ``options`` (what a run is asked for), ``contract`` (``Scorer``, ``ScoredLogits``), ``hf`` (the
contract over a Hugging Face model), ``forward`` (its forward pass: the body once, the head at the scored
positions), ``packer`` (examples -> one padded batch), ``figures`` (the math on logits), ``results`` (figures ->
``ScoreResult``), ``api`` (the library's entry points and ``scorer_for``), ``windows`` (text longer than the
context).
"""

from ce_inspect.scoring.api import (
    score,
    score_batch,
    score_encoded,
    score_messages,
    scorer_for,
)
from ce_inspect.scoring.contract import ScoredLogits, Scorer
from ce_inspect.scoring.figures import (
    cross_entropy,
    nonfinite_error,
    nonfinite_row,
    token_figures,
)
from ce_inspect.scoring.forward import (
    PROBE_PADDING,
    PROBE_TOKENS,
    log,
    own_losses,
    scored_rows,
    vocab_size,
)
from ce_inspect.scoring.hf import HFScoredLogits, HFScorer, top_k_note
from ce_inspect.scoring.options import (
    DEFAULT_CHUNK_BYTES,
    REDUCTIONS,
    ScoreOptions,
    check_reduction,
)
from ce_inspect.scoring.packer import Packed, pack
from ce_inspect.scoring.results import build_results, turn_summaries
from ce_inspect.scoring.windows import (
    WINDOWS_PER_BATCH,
    score_examples,
    score_windows,
)

__all__ = [
    "PROBE_PADDING",
    "PROBE_TOKENS",
    "DEFAULT_CHUNK_BYTES",
    "HFScoredLogits",
    "HFScorer",
    "Packed",
    "REDUCTIONS",
    "ScoreOptions",
    "ScoredLogits",
    "Scorer",
    "WINDOWS_PER_BATCH",
    "build_results",
    "check_reduction",
    "cross_entropy",
    "log",
    "nonfinite_error",
    "nonfinite_row",
    "own_losses",
    "pack",
    "score",
    "score_batch",
    "score_encoded",
    "score_examples",
    "score_messages",
    "score_windows",
    "scored_rows",
    "scorer_for",
    "token_figures",
    "top_k_note",
    "turn_summaries",
    "vocab_size",
]
