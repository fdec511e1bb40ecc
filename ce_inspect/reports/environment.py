"""The jinja2 template environments (HTML autoescaped; Markdown escaped by a finalize step), Markdown
escaping and the code fence around a command line.
"""

from __future__ import annotations

import re
from typing import Any

from ce_inspect.display import LOSS_BINS, loss_css, printable


class MarkdownText(str):
    """Markdown a template builds itself (tables, links): the finalize step leaves it as it is."""


#: Characters that mean something to GitHub-flavoured Markdown inline (emphasis, code, links, HTML,
#: tables, strikethrough, entities, math, emoji, mentions, issue links), written as numeric references.
#: A strip line longer than this many tokens shows them and folds the rest into a "show all" <details>, so a
#: long example neither runs off nor fills the page (HTML; Markdown folds its per-token table the same way).
FOLD_TOKENS = 400
_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|~&$:@#]")


def markdown_escape(value: Any) -> str:
    """Any value as inert Markdown text: every character GitHub could read as markup becomes ``&#N;``."""
    if isinstance(value, MarkdownText):
        return value
    text = printable(str(value)) if not isinstance(value, (int, float)) else str(value)
    return _MD_SPECIAL.sub(lambda m: f"&#{ord(m[0])};", text)


def fence(command: str) -> str:
    """A code fence longer than any run of backticks in the command, so nothing in it can close the block."""
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    return "`" * max(3, longest + 1)


def _loader() -> Any:
    import jinja2

    return jinja2.PackageLoader("ce_inspect.reports", "templates")


def html_environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=_loader(), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.globals["LOSS_BINS"] = LOSS_BINS
    env.globals["LOSS_CSS"] = loss_css()  # no character autoescaping changes
    env.globals["FOLD_TOKENS"] = FOLD_TOKENS
    return env


def markdown_environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=_loader(),
        autoescape=False,
        finalize=markdown_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["raw"] = MarkdownText  # a command line inside its fence: shown as it is
    return env
