"""ce-inspect: per-token cross-entropy of an answer given a prompt, exactly as training computes it.

Notebook use::

    from ce_inspect import load, score
    lm = load()                      # bundled SmolLM2-135M-Instruct; or load("path/or/hub-id")
    # lm = load(model=hf_model, tokenizer=tokenizer)   # objects already in memory
    result = score(lm, "Where is the capital of China?", " The capital is Beijing.")
    result.summary.mean, [(t.token, t.loss) for t in result.tokens]

    # The same pair through the model's chat template; a conversation, every assistant turn scored:
    score(lm, "Where is the capital of China?", "Beijing.", layout=Layout(chat=True))
    result = score_messages(lm, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    [(t.turn, t.role, t.mean) for t in result.turns]

A data set, as ``ce-inspect batch`` scores it (resumable, sharded under torchrun; ``diff_dataset``,
``audit_dataset``, ``prefs_dataset`` (preference pairs, TRL's DPO figures), ``choices_dataset`` (multiple
choice as lm-eval scores it) and, with a tokenizer only, ``audit_without_model`` likewise)::

    summary = score_dataset(lm, "samples/pairs.jsonl", output="scores.jsonl")
    summary.token_weighted_mean_loss

Importing this package does not import torch or transformers; ``load`` does.
"""

import os as _os

# Intel MKL's float32 matmul picks its kernel, and on several threads how it splits the sum, from the
# number of rows in the call. On Intel CPUs strict conditional reproducibility makes every row's sum
# independent of the other rows, so batched figures there equal one-by-one ones bit for bit. It does not on
# AMD CPUs (measured on an AMD EPYC: rows differ by up to 9e-5 with any MKL_CBWR value and thread count);
# what holds everywhere is the float32 bound of ce_inspect.numerics. MKL reads it at its first call, hence
# here, before torch runs anything; a value the user set wins. Other BLAS libraries ignore it.
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from ce_inspect.audit import audit_dataset, audit_without_model
from ce_inspect.choices import ChoicesSummary, choices_dataset
from ce_inspect.contract import (
    SCHEMA_VERSION,
    SOURCE_VERSION,
    ScoreResult,
    SequenceToken,
    Summary,
    TokenScore,
    TurnSummary,
)
from ce_inspect.data import Fields
from ce_inspect.dataset import BatchSettings, DatasetSummary, KeepFilter, score_dataset
from ce_inspect.diff import DiffResult, DiffSummary, TokenDiff, diff, diff_dataset, diff_messages
from ce_inspect.errors import CeInspectError
from ce_inspect.model import LoadedModel, load, load_tokenizer
from ce_inspect.notebook import lines_to_pandas, read_lines
from ce_inspect.prefs import PrefsDatasetSummary, prefs_dataset
from ce_inspect.reports.notebook import register as _register_notebook_views
from ce_inspect.scoring import (
    ScoreOptions,
    cross_entropy,
    score,
    score_batch,
    score_encoded,
    score_messages,
    token_figures,
)
from ce_inspect.text import (
    IGNORE_INDEX,
    Encoded,
    Layout,
    encode,
    encode_chat,
    encode_messages,
    encode_pair,
    joint_split,
    parse_messages,
)

__version__ = SOURCE_VERSION

_register_notebook_views()  # every result's _repr_html_ (ce_inspect.notebook)

__all__ = [
    "IGNORE_INDEX",
    "SCHEMA_VERSION",
    "BatchSettings",
    "KeepFilter",
    "CeInspectError",
    "DatasetSummary",
    "DiffResult",
    "DiffSummary",
    "Encoded",
    "Fields",
    "Layout",
    "LoadedModel",
    "PrefsDatasetSummary",
    "ScoreOptions",
    "ScoreResult",
    "SequenceToken",
    "Summary",
    "TokenDiff",
    "TokenScore",
    "TurnSummary",
    "audit_dataset",
    "audit_without_model",
    "cross_entropy",
    "lines_to_pandas",
    "read_lines",
    "ChoicesSummary",
    "choices_dataset",
    "diff",
    "diff_dataset",
    "diff_messages",
    "encode",
    "encode_chat",
    "encode_messages",
    "encode_pair",
    "joint_split",
    "load",
    "load_tokenizer",
    "parse_messages",
    "prefs_dataset",
    "score",
    "score_batch",
    "score_dataset",
    "score_encoded",
    "score_messages",
    "token_figures",
]
