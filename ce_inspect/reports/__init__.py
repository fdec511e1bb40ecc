"""HTML and Markdown reports, rendered from the JSON documents only (so what a report shows is the JSON).

A run's report is built from ``ScoreResult.to_dict()``; a batch's from ``DatasetSummary.to_dict()`` and the
output lines (``BatchLines`` keeps what it needs of them: loss by position and the worst lines whole).
Templates live in ``ce_inspect/reports/templates``; jinja2 escapes every value in HTML, and a finalize step
escapes every value in Markdown, so a token cannot add markup to either.

Every figure goes through ``display.fmt`` (4 decimals), as in the terminal. Each number in the HTML sits in
an element whose ``data-f`` attribute names the JSON field it shows (``tokens.3.loss``), which is how the
tests check every number against the JSON document.

``pieces`` holds what every report shares (the strip, the token rows, the legend, ``script_json``),
``environment`` the template environments and Markdown escaping; ``run``, ``batch``, ``diff``, ``audit``,
``prefs`` and ``choices`` each hold one command's context and its HTML and Markdown.
"""

from ce_inspect.reports.audit import AUDIT_RECORDS_SHOWN, audit_context, audit_html, audit_markdown
from ce_inspect.reports.batch import batch_context, batch_html, batch_markdown
from ce_inspect.reports.choices import ChoicesLines, choices_context, choices_html, choices_markdown
from ce_inspect.reports.diff import (
    KL_BINS,
    diff_context,
    diff_dataset_context,
    diff_dataset_html,
    diff_dataset_markdown,
    diff_html,
    diff_markdown,
    kl_bin,
)
from ce_inspect.reports.environment import MarkdownText, fence, html_environment, markdown_environment, markdown_escape
from ce_inspect.reports.lines import BatchLines
from ce_inspect.reports.pieces import (
    REPORT_MARK,
    REPORT_MARK_TEXT,
    TARGET_SEGMENTS,
    legend,
    script_json,
    shown_id,
    skipped_rows,
    strip_lines,
    token_rows,
)
from ce_inspect.reports.prefs import MostNegative, PrefsLines, aligned_strips, prefs_context, prefs_html, prefs_markdown
from ce_inspect.reports.run import run_context, run_html, run_markdown

__all__ = [
    "AUDIT_RECORDS_SHOWN",
    "BatchLines",
    "ChoicesLines",
    "KL_BINS",
    "MarkdownText",
    "MostNegative",
    "PrefsLines",
    "REPORT_MARK",
    "REPORT_MARK_TEXT",
    "TARGET_SEGMENTS",
    "audit_context",
    "audit_html",
    "aligned_strips",
    "audit_markdown",
    "batch_context",
    "batch_html",
    "batch_markdown",
    "choices_context",
    "choices_html",
    "choices_markdown",
    "diff_context",
    "diff_dataset_context",
    "diff_dataset_html",
    "diff_dataset_markdown",
    "diff_html",
    "diff_markdown",
    "fence",
    "html_environment",
    "kl_bin",
    "legend",
    "markdown_environment",
    "markdown_escape",
    "prefs_context",
    "prefs_html",
    "prefs_markdown",
    "run_context",
    "run_html",
    "run_markdown",
    "script_json",
    "shown_id",
    "skipped_rows",
    "strip_lines",
    "token_rows",
]
