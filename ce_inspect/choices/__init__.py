"""Multiple choice as lm-evaluation-harness scores it: each choice's log-likelihood given the question's
context, token by token, and acc / acc_norm with their standard errors.

The package: ``encoding`` (a question -> one encoded example per choice: lm-eval's request by default),
``figures`` (a question's choices scored in one forward pass, the predictions, ``mean_stderr``), ``dataset``
(``choices`` as a job for the one runner, its summary, its lines read back; ``choices_dataset``).
"""

from __future__ import annotations

from ce_inspect.choices.dataset import (
    ChoicesReport,
    ChoicesSummary,
    Outcome,
    choices_dataset,
    choices_job,
    choices_line_stats,
    effective_tokenization,
)
from ce_inspect.choices.encoding import (
    LM_EVAL,
    Question,
    choices_layout,
    encode_lmeval,
    encode_question,
    lmeval_request,
    prefix_token_id,
)
from ce_inspect.choices.figures import ChoiceScore, QuestionResult, argmax, mean_stderr, score_questions

__all__ = [
    "LM_EVAL",
    "ChoiceScore",
    "ChoicesReport",
    "ChoicesSummary",
    "Outcome",
    "Question",
    "QuestionResult",
    "argmax",
    "choices_dataset",
    "choices_job",
    "choices_layout",
    "choices_line_stats",
    "effective_tokenization",
    "encode_lmeval",
    "encode_question",
    "lmeval_request",
    "mean_stderr",
    "prefix_token_id",
    "score_questions",
]
