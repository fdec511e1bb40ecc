"""Rendering of chat results: table sections per turn, part labels, compact top-k, heat strip."""

from __future__ import annotations

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
