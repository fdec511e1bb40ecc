"""`ce-inspect choices --html/--markdown`: every figure of the page equals the JSON lines and the summary (in the
terminal's precision), each question's marks are the argmax of its own figures, the Markdown tables equal the
JSON, hostile choices stay text, long contexts and many questions fold, and a bad report path is refused before
the model loads."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from test_report import HOSTILE, check_tips, expected, parse, resolve, shown, tables_of

from ce_inspect.cli import main
from ce_inspect.reports import ChoicesLines, choices_html, choices_markdown
from ce_inspect.reports.choices import CONTEXT_FOLD, QUESTIONS_OPEN

LONG_CONTEXT = "A passage that runs on. " * 20 + "\nQuestion: which?\nAnswer:"
ROWS = [
    {"id": "capital", "prompt": "The capital of China is", "choices": [" Beijing", " Shanghai", " a city"], "label": 0},
    {"id": "x<b>", "query": "Q: 2+2=\nA:", "choices": [" 4", HOSTILE, "22"], "gold": 1},
    {"context": LONG_CONTEXT, "choices": [" yes", " no | `maybe`", " *never*"], "label": 2},
]
#: The figures the terminal shows in 3 decimals (``render_choices.questions_table``).
LL_KEYS = ("sum_logprob", "norm_logprob", "mutual_info")


def want(path: str, value) -> str:
    """The text a choices report shows for the JSON value at ``path``, written out here rather than imported."""
    key = path.rsplit(".", 1)[-1]
    if path.startswith("versions."):  # as they are
        return value
    if key in LL_KEYS:
        return f"{value:.3f}"
    if key == "is_greedy":
        return "yes" if value else "no"
    if key == "text":
        return shown(value)
    if key == "context":  # newlines kept, other control characters escaped
        return "".join(ch if ch in " \n" or ch.isprintable() else f"\\x{ord(ch):02x}" for ch in value)
    return expected(path, value)


def lookup(summary: dict, lines: dict):
    def doc(path: str):
        if path.startswith("line-"):
            head, _, rest = path.partition(".")
            return resolve(lines[int(head.removeprefix("line-"))], rest)
        return resolve(summary, path)

    return doc


def marks_of(line: dict, k: int) -> list[str]:
    """The marks of choice ``k``, from the argmax of the line's own figures (the first of equal ones)."""

    def argmax(key: str) -> int:
        values = [c[key] for c in line["choices"]]
        return values.index(max(values))

    marks = ["gold"] if k == line["label"] else []
    keys = [("pred", "sum_logprob"), ("norm", "norm_logprob")] + [("mi", "mutual_info")] * ("pred_mutual_info" in line)
    return marks + [name for name, key in keys if argmax(key) == k]


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A tiny model with a context long enough for the long context (one byte a token)."""
    from tests.conftest import build_model

    return build_model(tmp_path_factory.mktemp("long-llama"), "llama", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def outputs(long_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("choices-report")
    data = tmp / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    paths = {n: tmp / n for n in ("out.jsonl", "s.json", "c.html", "c.md")}
    args = ["choices", str(data), "-m", str(long_model), "--device", "cpu", "--mutual-info"]
    args += ["-o", str(paths["out.jsonl"]), "--summary-json", str(paths["s.json"])]
    assert main([*args, "--html", str(paths["c.html"]), "--markdown", str(paths["c.md"])]) == 0
    summary = json.loads(paths["s.json"].read_text())
    lines = {d["line"]: d for d in map(json.loads, paths["out.jsonl"].read_text().splitlines())}
    return summary, lines, paths, data


def check_page(html: str, summary: dict, lines: dict) -> None:
    page = parse(html)
    doc = lookup(summary, lines)
    fields = {}
    for path, text in page.fields:
        value = doc(path)
        if isinstance(value, dict):  # a strip token: check_tips compares it
            continue
        assert text.strip() == want(path, value), (path, text, value)
        fields[path] = text
    for name in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "acc_mutual_info", "acc_mutual_info_stderr"):
        assert name in fields
    assert {f"versions.{k}" for k in summary["versions"]} <= set(fields)
    assert {"questions", "bits_per_byte", "correct", "correct_norm", "correct_mutual_info", "skipped_count"} <= set(
        fields
    )
    for n, line in lines.items():
        assert f'<section class="question" id="line-{n}">' in html and f"line-{n}.context" in fields
        for k in range(len(line["choices"])):
            base = f"line-{n}.choices.{k}"
            assert {f"{base}.{key}" for key in (*LL_KEYS, "count", "is_greedy", "text")} <= set(fields)
    check_tips(page, doc)  # every strip token: its text, prob, loss and rank are the line's
    tokens = [f for f, _, _ in page.tips]
    assert sorted(tokens) == sorted(
        f"line-{n}.choices.{k}.tokens.{j}"
        for n, line in lines.items()
        for k, c in enumerate(line["choices"])
        for j in range(len(c["tokens"]))
    )  # every scored token of every choice, once
    assert page.stray == []  # no figure outside an element that names its JSON field
    assert json.loads(page.scripts["ce-inspect-summary"]) == summary
    for n, line in lines.items():  # the marks: gold, and each prediction, recomputed from the figures
        section = html[html.index(f'id="line-{n}"') :].split("</section>")[0]
        rows = re.findall(r"<tr[^>]*><td class=\"num\" data-f=\"[^\"]*\.index\">(\d+)</td>(.*?)</tr>", section)
        assert len(rows) == len(line["choices"])
        for k, row in rows:
            assert re.findall(r'<span class="mark [^"]*">(\w+)</span>', row) == marks_of(line, int(k)), (n, k)


def test_html_figures_equal_the_json_lines_and_summary(outputs):
    summary, lines, paths, _ = outputs
    html = paths["c.html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>\n<!-- ce-inspect report: choices -->")
    assert "ce-inspect choices" in html and "--mutual-info" in html
    check_page(html, summary, lines)
    assert len(LONG_CONTEXT) > CONTEXT_FOLD and "show the whole context" in html  # the long context folds


def test_the_lines_on_stdout_give_the_same_page(outputs, long_model, tmp_path, capsys):
    summary, lines, _, data = outputs
    page, sj = tmp_path / "c.html", tmp_path / "s.json"
    args = ["choices", str(data), "-m", str(long_model), "--device", "cpu", "--mutual-info"]
    capsys.readouterr()
    assert main([*args, "--html", str(page), "--summary-json", str(sj)]) == 0
    streamed = {d["line"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert streamed == lines
    check_page(page.read_text(encoding="utf-8"), json.loads(sj.read_text()), lines)


def test_markdown_tables_equal_the_json(outputs):
    from markdown_it import MarkdownIt

    summary, lines, paths, _ = outputs
    md = paths["c.md"].read_text(encoding="utf-8")
    assert md.startswith("<!-- ce-inspect report: choices -->")
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<script" not in rendered
    tables = tables_of(rendered)
    metrics = {r[0]: r[1:] for r in tables[0][1:]}
    for name, right in (("acc", "correct"), ("acc_norm", "correct_norm"), ("acc_mutual_info", "correct_mutual_info")):
        assert metrics[name] == [f"{summary[name]:.4f}", f"{summary[name + '_stderr']:.4f}", str(summary[right])]
    assert f"bits per byte (of the gold choices) {summary['bits_per_byte']:.4f}" in rendered
    assert len(tables) == 1 + len(lines)
    for table, line in zip(tables[1:], (lines[n] for n in sorted(lines)), strict=True):
        assert table[0][:3] == ["#", "choice", "logL"]
        for k, (row, c) in enumerate(zip(table[1:], line["choices"], strict=True)):
            tokens = "".join(shown(t["token"], t.get("special", False), t.get("bytes")) for t in c["tokens"])
            right = " ✓" if k == line["label"] else " ✗"
            marks = " ".join(m if m == "gold" else m + right for m in marks_of(line, k))
            assert row == [
                str(k), shown(c["text"]), f"{c['sum_logprob']:.3f}", row[3], f"{c['norm_logprob']:.3f}",
                f"{c['mutual_info']:.3f}", str(c["count"]), "yes" if c["is_greedy"] else "no", marks, tokens,
            ]  # fmt: skip
            assert row[3].count("█") >= 1 and len(row[3]) == 10  # the bar, as the terminal's


def test_hostile_choices_and_ids_stay_text(outputs):
    from markdown_it import MarkdownIt

    summary, lines, paths, _ = outputs
    html = paths["c.html"].read_text(encoding="utf-8")
    page = parse(html)
    assert page.tags.count("script") == 1 and "img" not in page.tags
    assert "\u202e" not in html and "x&lt;b&gt;" in html
    hostile = (lines[2]["id"], lines[2]["choices"][1])
    assert hostile[0] == "x<b>" and hostile[1]["text"] == HOSTILE
    assert ("line-2.choices.1.text", shown(HOSTILE)) in page.fields
    md = paths["c.md"].read_text(encoding="utf-8")
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<script" not in rendered and "<code>" not in rendered.split("</pre>")[1]
    rows = {r[1]: r for t in tables_of(rendered)[1:] for r in t[1:]}
    assert shown(HOSTILE) in rows and len(rows[shown(HOSTILE)]) == 10  # one cell: the | did not split it
    assert shown(" no | `maybe`") in rows and shown(" *never*") in rows


def test_many_questions_fold_after_the_first_and_the_rest_stay_in_the_json(outputs):
    summary, lines, _, _ = outputs
    n = QUESTIONS_OPEN + 6
    kept = ChoicesLines(keep=QUESTIONS_OPEN + 4)
    for k in reversed(range(1, n + 1)):  # out of order: the first lines are kept
        kept.add(dict(copy.deepcopy(lines[1]), line=k))
    kept.add(dict(copy.deepcopy(lines[1]), line=1))  # a resumed line read twice is kept once
    html = choices_html({**summary, "questions": n}, kept, "ce-inspect choices q.jsonl --html r.html")
    opened, folded = html.split('<details class="questions">')
    assert opened.count('<section class="question"') == QUESTIONS_OPEN
    assert folded.count('<section class="question"') == 4 and "the next 4 questions" in folded
    assert re.search(r'<span data-more="questions">2</span> more questions in the JSON lines', folded)
    assert [int(m) for m in re.findall(r'<section class="question" id="line-(\d+)"', html)] == list(range(1, 25))
    md = choices_markdown({**summary, "questions": n}, kept, "ce-inspect choices q.jsonl")
    assert "<details><summary>The next 4 questions</summary>" in md and "and 2 more questions" in md


def test_a_line_without_its_context_still_renders(outputs):
    summary, lines, _, _ = outputs
    old = {k: v for k, v in lines[1].items() if k != "context"}  # a line written before the field
    kept = ChoicesLines()
    kept.add(old)
    html = choices_html({**summary, "questions": 1}, kept, "ce-inspect choices q.jsonl")
    assert "the line holds no context" in html and 'data-f="line-1.context"' not in html


@pytest.fixture
def no_load(monkeypatch):
    import ce_inspect.cli.options  # the command line's one call of `load`

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ce_inspect.cli.options, "load", refuse)


@pytest.mark.parametrize("flag", ["--html", "--markdown", "--svg"])
def test_a_bad_report_path_is_refused_before_the_model_loads(flag, tmp_path, capsys, no_load):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    code = main(["choices", str(data), "-o", str(tmp_path / "o.jsonl"), flag, str(tmp_path / "missing" / "r.out")])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"Error: {flag} ") and "does not exist" in err and err.count("\n") == 1
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    assert main(["choices", str(data), "-o", str(tmp_path / "o.jsonl"), "--html", str(notes)]) == 1
    assert notes.read_text() == "my notes" and not (tmp_path / "o.jsonl").exists()
    assert main(["choices", str(data), "--markdown", "-"]) == 2  # stdout carries the JSON lines
    out, err = capsys.readouterr()
    assert out == "" and "--markdown" in err


def test_each_line_holds_its_context_as_the_model_read_it(outputs):
    """The tokens ahead of the first choice: the BOS token the tiny tokenizer adds, then the context as given
    (one byte a token, so the join is the text itself)."""
    _, lines, _, _ = outputs
    contexts = [next(r[k] for k in ("prompt", "query", "context") if k in r) for r in ROWS]
    assert [lines[n]["context"] for n in sorted(lines)] == ["<s>" + c for c in contexts]
