"""Rendering of chat results: table sections per turn, part labels, compact top-k, heat strip."""

from __future__ import annotations

import pytest
from rich.console import Console

from ce_inspect import Layout, ScoreOptions, score, score_messages
from ce_inspect.cli.render import render_result, sequence_view, token_table

CONVERSATION = [
    {"role": "user", "content": "Say [bold]x[/bold]"},
    {"role": "assistant", "content": "[/red] the cat"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "in"},
]


def rendered(renderable, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def test_each_turn_section_names_its_turn_and_part(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, layout=Layout(mask_prompt=False))
    rows = table_rows(rendered(token_table(result.tokens, 0, result.layout["roles"])))
    assert len(rows) == len(result.tokens)
    starts = [row for row in rows if row[0]]
    assert [row[0] for row in starts] == ["-", "0", "1", "2", "3"]
    assert all(row[1] for row in starts)  # the part is named at the top of every turn section
    assert {row[1] for row in rows if row[1]} == {"template", "system", "user", "assistant", "eot"}


def test_top_k_cells_and_strip_keep_markup_like_tokens_verbatim(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, options=ScoreOptions(top_k=3))
    table = rendered(token_table(result.tokens, 3, result.layout["roles"]))
    assert "top 3" in table and "✓ the target is the model's greedy choice" in table
    for t in result.tokens:
        assert len(t.top_k) == 3
    strip = sequence_view(result.sequence, None, result.layout["roles"]).plain
    assert "Say␣[bold]x[/bold]" in strip and "[/red]" in strip
    assert strip.splitlines()[0].startswith("template ▸ <|im_start|>system↵")
    assert [line.split(" ▸ ")[0] for line in strip.splitlines() if " ▸ " in line] == [
        "template",
        "0 user",
        "1 assistant",
        "2 user",
        "3 assistant",
    ]


def test_narrow_terminal_cuts_alternatives_instead_of_wrapping(tiny_llama):
    result = score(tiny_llama, "the cat", " is in", options=ScoreOptions(top_k=5))
    console = Console(record=True, width=80, color_system=None)
    render_result(result, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line for line in text.splitlines() if line.startswith("│") and "┃" not in line]
    assert rows and all(line.endswith("│") for line in rows)


def header_cells(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("┃") or line.startswith(" target"))
    if line.startswith("┃"):
        return [cell.strip() for cell in line.split("┃")[1:-1]]
    return line.split()


def table_body(text: str) -> list[list[str]]:
    """The token table's rows (the per-turn table below it has rows of its own)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            body.append([cell.strip() for cell in line.split("│")[1:-1]])
    return body


def rendered_wide(result, top_k: int) -> str:
    console = Console(record=True, width=300, color_system=None)
    console.print(token_table(result.tokens, top_k, result.layout.get("roles"), width=300))
    return console.export_text()


@pytest.mark.parametrize("width", [24, 30, 40, 50, 60, 80, 120])
@pytest.mark.parametrize(("chat", "top_k"), [(False, 0), (False, 3), (True, 0), (True, 5)])
def test_target_prob_and_loss_stay_at_every_width(tiny_llama, width, chat, top_k):
    options = ScoreOptions(top_k=top_k)
    if chat:
        result = score_messages(tiny_llama, CONVERSATION, layout=Layout(mask_prompt=False), options=options)
    else:
        result = score(tiny_llama, "the cat", " is 😀 in", options=options)
    console = Console(record=True, width=width, color_system=None)
    render_result(result, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    headers = header_cells(text)
    assert {"target", "prob", "loss"} <= set(headers)
    # Columns go in one order on a narrow line (id, top choice, part, turn, #, top-k, rank): what is left
    # of the optional ones is always a tail of that order.
    order = ["id", "top choice", "part", "turn", "#", f"top {top_k}", "rank"]
    present = [h for h in order if h in headers]
    possible = [h for h in order if h in set(present) or h in header_cells(rendered_wide(result, top_k))]
    assert present == possible[len(possible) - len(present) :]
    body = table_body(text)
    # Every scored token has its row, and the figures in it are the result's, at the table's precision.
    prob_at, loss_at = headers.index("prob"), headers.index("loss")
    assert len(body) == len(result.tokens)
    for row, t in zip(body, result.tokens):
        assert row[prob_at] == f"{t.prob:.4f}" and row[loss_at] == f"{t.loss:.4f}"
    if width >= 80 and not top_k and not chat:
        assert {"#", "rank", "top choice"} <= set(headers)


def test_the_legend_wraps_between_entries(tiny_llama):
    result = score(tiny_llama, "the cat", " is 😀 in", layout=Layout(mask_prompt=False))
    for width in (30, 40, 60):
        console = Console(record=True, width=width, color_system=None)
        render_result(result, console)
        lines = [line.strip("│ ") for line in console.export_text().splitlines()]
        entries = ["scored loss: <0.5 <2 <4 ≥4", "␣ space", "↵ newline", "⇥ tab", "┃: context | answer boundary"]
        for entry in entries:
            if len(entry) <= width - 4:  # an entry longer than the panel's line wraps inside itself
                assert any(entry in line for line in lines), (width, entry)
        assert any(
            "<F0 9F> bytes of part of a character" in line or "<F0 9F> bytes of part of a" in line for line in lines
        )
