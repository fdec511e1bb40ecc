"""HTML, Markdown and SVG reports: every number they show equals the JSON document of the same run
(rounded as displayed), hostile tokens stay text, and report files follow the output rules."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from ce_inspect.cli import main

HOSTILE = "</script><img src=x onerror=alert(1)>|`x`\u202e&amp;*_[a](b)<!--"
NUMBER = re.compile(r"-?\d+\.\d+(?:e[+-]\d+)?")


# --- independent expectations ---------------------------------------------------------------------------

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def shown(token: str, special: bool = False, raw: str | None = None) -> str:
    """How the terminal shows a token, written out again here rather than imported."""
    if raw is not None and not special:
        return f"<{raw}>"
    out = []
    for ch in token:
        if not special and ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out) or "∅"


def expected(path: str, value) -> str:
    """The text a report shows for the JSON value at ``path``: 4 decimals, as the terminal."""
    key = path.rsplit(".", 1)[-1]
    if isinstance(value, bool) or isinstance(value, int) and key not in ("label_smoothing",):
        return str(value)
    if key == "perplexity":
        return f"{value:.3f}"
    if key == "model_loss":
        return f"{value:.6f}"
    if key == "verify_abs_diff":
        return f"{value:.2e}"
    if key.isdigit() and ".edges." in f".{path}":
        return f"{value:g}"
    return f"{value:.4f}"


def resolve(doc, path: str):
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


# --- parsing ----------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Collects every element with a ``data-f`` (the JSON field it shows), tooltips, scripts and stray numbers."""

    # Tokens and the command are checked on their own; the legend shows the scale's fixed thresholds.
    TOKEN_CLASSES = {"t", "tok", "alt", "cmd", "label", "legend"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.fields: list[tuple[str, str]] = []  # (data-f, text)
        self.tips: list[tuple[str | None, str, str]] = []  # (data-f, tooltip, shown token)
        self.positions: list[list[str]] = []
        self.scripts: dict[str, str] = {}
        self.stray: list[str] = []
        self.tags: list[str] = []
        self._text: list[list[str]] = []
        self._cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag in ("br", "meta", "img", "hr", "link", "input"):
            return
        self.stack.append((tag, a))
        self._text.append([])

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1][0] != tag:
            return
        tag, a = self.stack.pop()
        text = "".join(self._text.pop())
        if self._text:
            self._text[-1].append(text)
        if tag == "script":
            self.scripts[a.get("id", "")] = text
        if "data-f" in a:
            self.fields.append((a["data-f"], text))
        if "data-tip" in a:
            self.tips.append((a.get("data-f"), a["data-tip"], text))
        if any("positions" in x.get("class", "") for _, x in self.stack):
            if tag == "tr":
                self.positions.append([])
            elif tag in ("td", "th"):
                self._cells.append(text.strip())
            if tag == "tr":
                self.positions[-1], self._cells = self._cells, []

    def handle_data(self, data):
        if self._text:
            self._text[-1].append(data)
        inside = self.stack
        if any(t in ("script", "style", "title") for t, _ in inside):
            return
        if any("data-f" in a or "data-pos" in a for _, a in inside):
            return
        if any(set(a.get("class", "").split()) & self.TOKEN_CLASSES for _, a in inside):
            return
        if any("positions" in a.get("class", "") for _, a in inside):
            return
        self.stray += NUMBER.findall(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def check_fields(page: Page, resolve_doc) -> int:
    """Every data-f element shows its JSON value as displayed; returns how many were checked."""
    checked = 0
    for path, text in page.fields:
        value = resolve_doc(path)
        if isinstance(value, dict):  # a token: its shown text (table rows hold cells with their own data-f)
            continue
        want = value if isinstance(value, str) else expected(path, value)  # versions.*: as they are
        assert text.strip().removesuffix(" ✓") == want, (path, text, value)
        checked += 1
    return checked


def check_tips(page: Page, resolve_doc) -> None:
    for field, tip, text in page.tips:
        if field is None:
            assert "masked: not scored" in tip
            continue
        tok = resolve_doc(field)
        assert text == shown(tok["token"], tok.get("special", False), tok.get("bytes"))
        m = re.search(r"prob (\S+)  loss (\S+)  rank (\d+)", tip)
        assert m is not None, tip
        assert m.groups() == (f"{tok['prob']:.4f}", f"{tok['loss']:.4f}", str(tok["rank"]))
        for alt in tok.get("top_k", []):
            assert f"  {shown(alt['token'], raw=alt.get('bytes'))}  {alt['prob']:.4f}" in tip


# --- run ------------------------------------------------------------------------------------------------


@pytest.fixture
def run_outputs(tiny_llama_dir, tmp_path, capsys):
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "html", "md", "svg")}
    answer = " 3 | `ok` <b> 🙂"  # the emoji's 4 bytes are 4 tokens, each shown by its bytes
    args = ["run", "-m", str(tiny_llama_dir), "--device", "cpu", "-p", "Q: 1+2?", "-a", answer, "--top-k", "3"]
    args += ["--verify", "-o", str(paths["json"]), "--html", str(paths["html"]), "--markdown", str(paths["md"])]
    args += ["--svg", str(paths["svg"])]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "loss along the answer" in out  # the terminal output is still printed, with its sparkline
    doc = json.loads(paths["json"].read_text())
    assert any("bytes" in t for t in doc["tokens"])
    return doc, paths


def test_run_html_numbers_equal_the_json(run_outputs):
    doc, paths = run_outputs
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>\n<!-- ce-inspect report")
    page = parse(html)
    checked = check_fields(page, lambda p: resolve(doc, p))
    n = len(doc["tokens"])
    assert checked >= 5 * n + 6  # index, id, prob, loss, rank of every token, and the summary
    assert {p for p, _ in page.fields} >= {f"tokens.{k}.loss" for k in range(n)} | {"summary.mean", "summary.sum"}
    check_tips(page, lambda p: resolve(doc, p))
    assert len(page.tips) == len(doc["sequence"])  # every token of the input is in the strip
    assert page.stray == []  # no figure outside an element that names its JSON field
    assert json.loads(page.scripts["ce-inspect-result"]) == doc  # the page carries the document itself
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "ce-inspect run -m" in html and "--top-k 3" in html  # the command that made it


def test_run_markdown_renders_the_json(run_outputs):
    from markdown_it import MarkdownIt

    doc, paths = run_outputs
    md = paths["md"].read_text()
    assert md.startswith("<!-- ce-inspect report")
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    tables = tables_of(rendered)
    summary = dict((row[0], row[1]) for row in tables[0][1:])
    s = doc["summary"]
    assert summary["mean loss"] == f"{s['mean']:.4f}" and summary["sum"] == f"{s['sum']:.4f}"
    assert summary["perplexity"] == f"{s['perplexity']:.3f}" and summary["scored tokens"] == str(s["count"])
    assert summary["model's own loss"] == f"{s['model_loss']:.6f}"
    rows = tables[1][1:]
    assert len(rows) == len(doc["tokens"])
    for row, t in zip(rows, doc["tokens"]):
        assert len(row) == 7  # no `|` in a token split a cell
        assert row[:6] == [
            str(t["index"]),
            shown(t["token"], t["special"], t.get("bytes")),
            str(t["token_id"]),
            f"{t['prob']:.4f}",
            f"{t['loss']:.4f}",
            f"{t['rank']}" + (" ✓" if t["rank"] == 1 else ""),
        ]


def test_run_svg_is_the_terminal_output(run_outputs):
    doc, paths = run_outputs
    svg = paths["svg"].read_text()
    assert svg.startswith("<!-- ce-inspect report: run -->")
    ET.fromstring(svg)  # well-formed XML: every token escaped
    assert "cdnjs" not in svg and "@font-face" not in svg  # no network fetch
    assert "loss&#160;along&#160;the&#160;answer" in svg or "loss along the answer" in svg
    assert f"{doc['summary']['mean']:.4f}" in svg


def test_one_loss_colour_scale_in_the_terminal_svg_and_html(run_outputs):
    """Issue 20: a token's loss had opposite colours in the terminal (green: low) and the HTML (yellow: low).
    Now each bin has one colour everywhere: the HTML's CSS, the terminal's style, the SVG's recording."""
    from rich.style import Style

    from ce_inspect.cli.render import _HEAT, HEAT_BAR, HEAT_BG, loss_style
    from ce_inspect.display import LOSS_BINS, loss_bin

    doc, paths = run_outputs
    html, svg = paths["html"].read_text(), paths["svg"].read_text().lower()
    css = {
        int(k): (bg.lower(), fg.lower())
        for k, bg, fg in re.findall(r"\.b(\d) \{ background: (#\w+); color: (#\w+); \}", html)
    }
    assert sorted(css) == [0, 1, 2, 3] and len({bg for bg, _ in css.values()}) == 4
    for loss in (0.1, 0.49, 0.5, 1.9, 2.0, 3.9, 4.0, 12.0):
        k = loss_bin(loss)
        assert k == sum(loss >= limit for limit in LOSS_BINS)
        for scale in (HEAT_BG, _HEAT):  # the strip and the tables' figures
            style = Style.parse(loss_style(loss, scale))
            assert (style.bgcolor.triplet.hex, style.color.triplet.hex) == css[k], (loss, scale)
        assert Style.parse(loss_style(loss, HEAT_BAR)).color.triplet.hex == css[k][0]  # bars: the glyph
    for k in {loss_bin(t["loss"]) for t in doc["tokens"]}:  # every bin the run's tokens fall in
        assert f'fill="{css[k][0]}"' in svg, k  # the terminal's recording paints it in the same colour


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif self.cell is not None:
            raise AssertionError(f"markup <{tag}> inside a table cell")  # a token turned into HTML

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables_of(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


# --- hostile tokens, from the document of a real run with its token text replaced -----------------------


@pytest.fixture
def hostile_doc(run_outputs):
    doc = copy.deepcopy(run_outputs[0])
    t = doc["tokens"][0]
    t["token"] = HOSTILE
    t["top_token"] = HOSTILE
    for alt in t.get("top_k", []):
        alt["token"] = HOSTILE
    next(s for s in doc["sequence"] if s["index"] == t["index"])["token"] = HOSTILE
    doc["notes"].append("note with </script> and \u2028 and \u2029")
    return doc


def test_hostile_tokens_stay_text_in_html(hostile_doc):
    from ce_inspect.reports import run_html

    html = run_html(hostile_doc, "ce-inspect run -a '</script>'")
    page = parse(html)
    assert page.tags.count("script") == 1 and "img" not in page.tags  # nothing a token holds became markup
    assert "\u202e" not in html and "\u2028" not in html and "\u2029" not in html
    script = page.scripts["ce-inspect-result"]
    assert "</" not in script and "<!--" not in script
    assert json.loads(script) == hostile_doc  # the escaped data still decodes to the document
    want = shown(HOSTILE)
    assert want in [text for _, _, text in page.tips]
    check_tips(page, lambda p: resolve(hostile_doc, p))


def test_hostile_tokens_stay_text_in_markdown(hostile_doc):
    from markdown_it import MarkdownIt

    from ce_inspect.reports import run_markdown

    md = run_markdown(hostile_doc, "ce-inspect run -a '```'")
    assert "\u202e" not in md
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<script" not in rendered and "<code>" not in rendered.split("</pre>")[1]
    row = tables_of(rendered)[1][1]
    assert len(row) == 7 and row[1] == shown(HOSTILE)  # one cell, shown exactly as the terminal shows it
    assert "````console" in md  # the fence is longer than the command's own backticks


# --- batch ------------------------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "prompt": "Where is it?", "answer": " Here, in the north."},
    {"id": "b<i>", "prompt": "x", "answer": "y"},
    {"prompt": "Q: 2+2", "answer": " 4 | `four`"},
    {"id": 4, "prompt": "Q", "answer": " A long answer that goes on and on, with numbers 1 2 3."},
    {"id": "e", "prompt": "Say hi", "answer": " hi"},
]


@pytest.fixture
def batch_outputs(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths = {k: tmp_path / f"b.{k}" for k in ("jsonl", "summary", "html", "md", "svg")}
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--device", "cpu", "--worst", "5", "--top-k", "2"]
    args += ["-o", str(paths["jsonl"]), "--summary-json", str(paths["summary"]), "--html", str(paths["html"])]
    args += ["--markdown", str(paths["md"]), "--svg", str(paths["svg"])]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "Mean loss per example" in out
    lines = [json.loads(x) for x in paths["jsonl"].read_text().splitlines()]
    return json.loads(paths["summary"].read_text()), lines, paths


def test_batch_histogram_counts_every_example(batch_outputs):
    summary, lines, _ = batch_outputs
    h = summary["example_loss_histogram"]
    means = [d["summary"]["mean"] for d in lines]
    counts = [0] * len(h["counts"])
    for m in means:
        k = next(k for k in range(len(counts)) if h["edges"][k] <= m < h["edges"][k + 1] or k == len(counts) - 1)
        counts[k] += 1
    assert h["counts"] == counts and sum(counts) == len(lines)
    assert h["edges"][0] <= min(means) and max(means) <= h["edges"][-1]


def test_batch_html_numbers_equal_the_json(batch_outputs):
    summary, lines, paths = batch_outputs
    by_line = {d["line"]: d for d in lines}

    def lookup(path):
        if path.startswith("line-"):
            head, _, rest = path.partition(".")
            return resolve(by_line[int(head.removeprefix("line-"))], rest)
        return resolve(summary, path)

    page = parse(paths["html"].read_text())
    assert check_fields(page, lookup) > 30
    fields = {p for p, _ in page.fields}
    assert {f"worst_examples.{k}.mean" for k in range(3)} <= fields
    edges = summary["example_loss_histogram"]["edges"]
    assert {f"example_loss_histogram.edges.{k}" for k in range(len(edges))} <= fields
    check_tips(page, lookup)
    assert page.stray == []
    assert json.loads(page.scripts["ce-inspect-summary"]) == summary
    # Mean loss by position, recomputed from the JSON lines.
    longest = max(len(d["tokens"]) for d in lines)
    want = []
    for k in range(longest):
        losses = [d["tokens"][k]["loss"] for d in lines if len(d["tokens"]) > k]
        want.append([str(k + 1), str(len(losses)), f"{sum(losses) / len(losses):.4f}"])
    assert page.positions[1:] == want
    # Each worst example links to its full table, which is on the page.
    html = paths["html"].read_text()
    for e in summary["worst_examples"]:
        assert f'href="#line-{e["line"]}"' in html and f'id="line-{e["line"]}"' in html
    assert "b&lt;i&gt;" in html and "i" not in page.tags  # every id is on the page (--worst 5), as text


def test_batch_markdown_tables_equal_the_json(batch_outputs):
    from markdown_it import MarkdownIt

    summary, _, paths = batch_outputs
    rendered = MarkdownIt("commonmark").enable("table").render(paths["md"].read_text())
    tables = tables_of(rendered)
    figures = dict((r[0], r[1]) for r in tables[0][1:])
    assert figures["token-weighted mean loss"] == f"{summary['token_weighted_mean_loss']:.4f}"
    assert figures["examples"] == str(summary["examples"])
    hist = [r[1] for r in tables[1][1:]]
    assert hist == [str(n) for n in summary["example_loss_histogram"]["counts"]]
    worst = tables[2][1:]
    assert [(r[0], r[2], r[3]) for r in worst] == [
        (str(e["line"]), f"{e['mean']:.4f}", str(e["count"])) for e in summary["worst_examples"]
    ]


def test_batch_svg_is_well_formed(batch_outputs):
    svg = batch_outputs[2]["svg"].read_text()
    ET.fromstring(svg)
    assert "Mean loss per example".replace(" ", "&#160;") in svg or "Mean loss per example" in svg


# --- files: checked first, written whole ------------------------------------------------------------------


@pytest.fixture
def no_load(monkeypatch):
    import ce_inspect.cli.options  # the command line's one call of `load`

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ce_inspect.cli.options, "load", refuse)


@pytest.mark.parametrize("flag", ["--html", "--svg", "--markdown"])
def test_bad_report_path_fails_before_the_model_loads(flag, tmp_path, capsys, no_load):
    code = main(["run", "-p", "x", "-a", " y", flag, str(tmp_path / "missing" / "r.out")])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"Error: {flag} ") and "does not exist" in err and err.count("\n") == 1


def test_report_refuses_a_file_it_did_not_write(tmp_path, capsys, no_load):
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    assert main(["run", "-p", "x", "-a", " y", "--html", str(notes)]) == 1
    assert "--html" in capsys.readouterr().err and notes.read_text() == "my notes"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "-p", "x", "-a", " y", "--json", "--markdown", "-"],
        ["run", "-p", "x", "-a", " y", "--json", "--markdown", "/dev/stdout"],
        ["run", "-p", "x", "-a", " y", "-o", "same.json", "--html", "same.json"],
        ["batch", "data.jsonl", "--markdown", "-"],  # stdout carries the JSON lines
    ],
)
def test_report_usage_conflicts_exit_2(args, capsys, no_load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("Error: ") and err.count("\n") == 1


def test_a_failed_render_leaves_no_file(tiny_llama_dir, tmp_path, monkeypatch):
    import importlib

    cli_app = importlib.import_module("ce_inspect.cli.app")  # where `run` renders its reports

    old = tmp_path / "old.html"
    old.write_text("<!DOCTYPE html>\n<!-- ce-inspect report: run -->\nprevious")

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(cli_app, "run_markdown", broken)
    args = ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", "--html", str(old)]
    with pytest.raises(RuntimeError):
        main([*args, "--svg", str(tmp_path / "new.svg"), "--markdown", str(tmp_path / "new.md")])
    assert old.read_text().endswith("previous")  # the HTML rendered fine but nothing is written until all did
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]  # and no temporary file is left


def test_markdown_on_stdout_replaces_the_terminal_output(tiny_llama_dir, capsys):
    assert main(["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", "--markdown", "-"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("<!-- ce-inspect report: run -->") and "Per-token loss" in out and "╭" not in out


def test_a_rerun_replaces_its_own_report(tiny_llama_dir, tmp_path, capsys):
    html = tmp_path / "r.html"
    for answer in (" y", " z"):
        assert main(["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", answer, "--html", str(html), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert json.loads(parse(html.read_text()).scripts["ce-inspect-result"]) == doc


# --- the shared display helpers ---------------------------------------------------------------------------


def test_sparkline_and_histogram():
    from ce_inspect.display import histogram, sparkline

    assert sparkline([0.0, 1.0, 7.0], 10) == "▁▂█"
    assert sparkline([1.0, 9.0, 0.0, 0.0], 2) == "█▁"  # each column the max of its stretch
    assert sparkline([], 5) == ""
    h = histogram([0.1, 0.7, 3.2, 5.0, 2.0])
    assert h["edges"][0] == 0.0 and sum(h["counts"]) == 5 and len(h["edges"]) == len(h["counts"]) + 1
    assert histogram([0.0, 0.0]) == {"edges": [0.0, 0.5], "counts": [2]}
    assert histogram([]) == {"edges": [], "counts": []}


def test_terminal_and_reports_show_tokens_alike():
    from ce_inspect.cli.render import visible
    from ce_inspect.display import shown_token

    for token in (" a\n", "\t\r", "", "x\u202ey", "<|im_end|>"):
        assert visible(token).plain == shown_token(token) == shown(token)


def test_resumed_batch_report_reads_the_kept_lines_back(batch_outputs, tiny_llama_dir, capsys):
    """A --resume run scores nothing new here, yet its report shows every worst example whole, from the file."""
    summary, lines, paths = batch_outputs
    data = paths["jsonl"].parent / "data.jsonl"
    html = paths["html"].parent / "resumed.html"
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--device", "cpu", "--worst", "5", "--top-k", "2"]
    assert main([*args, "-o", str(paths["jsonl"]), "--resume", "--html", str(html)]) == 0
    capsys.readouterr()
    page = parse(html.read_text())
    by_line = {d["line"]: d for d in lines}
    shown_lines = {int(p.split(".")[0].removeprefix("line-")) for p, _ in page.fields if p.startswith("line-")}
    assert shown_lines == set(by_line)  # all five examples have their strip and table
    resumed = json.loads(page.scripts["ce-inspect-summary"])
    assert resumed["resumed"] == len(lines) and resumed["worst_examples"] == summary["worst_examples"]


# --- diff and audit ---------------------------------------------------------------------------------------


def expected_diff(path: str, value) -> str:
    """A diff report's figure: the summary's statistics and the per-token KL in 6 decimals, the rest in 4."""
    key = path.rsplit(".", 1)[-1]
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if path.startswith("summary.") or key in ("kl", "kl_mean"):
        return f"{value:.6f}"
    return f"{value:.4f}"


def check_diff_fields(page: Page, doc, want=expected_diff) -> int:
    checked = 0
    for path, text in page.fields:
        value = resolve(doc, path)
        if isinstance(value, dict):
            continue
        assert text.strip() == (value if isinstance(value, str) else want(path, value)), (path, text, value)
        checked += 1
    return checked


def top_worst(tokens: list[dict], worst: int) -> list[dict]:
    """The disagreement table's rows, chosen here on their own: the ``worst`` largest KL, in input order."""
    return sorted(sorted(tokens, key=lambda t: -t["kl"])[:worst], key=lambda t: t["index"])


def top_of(side: dict) -> str:
    return shown(side["top_token"], raw=side.get("top_bytes"))


def check_diff_tips(page: Page, doc) -> None:
    assert len(page.tips) == len(doc["tokens"])  # every scored token is in the strip
    for field, tip, text in page.tips:
        t = resolve(doc, field)
        assert text == shown(t["token"], t["ref"]["special"], t["ref"].get("bytes"))
        for side in ("ref", "cand"):
            s = t[side]
            m = re.search(rf"{side} *prob (\S+)  loss (\S+)  rank (\d+)  top-1 (.*)", tip)
            assert m is not None, tip
            assert m.groups() == (f"{s['prob']:.4f}", f"{s['loss']:.4f}", str(s["rank"]), top_of(s))
        assert f"KL {t['kl']:.6f}  ΔNLL {t['dnll']:.4f}" in tip
        # ΔNLL is the candidate's loss minus the reference's (no label smoothing here), within display rounding
        assert abs(t["dnll"] - (t["cand"]["loss"] - t["ref"]["loss"])) < 1e-4


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    import conftest

    return conftest.build_model(tmp_path_factory.mktemp("b"), seed=1)


@pytest.fixture
def diff_outputs(tiny_llama_dir, model_b, tmp_path, capsys):
    paths = {k: tmp_path / f"d.{k}" for k in ("json", "html", "md", "svg")}
    args = ["diff", "-m", str(tiny_llama_dir), "--model-b", str(model_b), "--device", "cpu", "-p", "Q: 1+2?"]
    args += ["-a", " 3 | `ok` <b> and more words here", "--worst", "4", "-o", str(paths["json"])]
    args += ["--html", str(paths["html"]), "--markdown", str(paths["md"]), "--svg", str(paths["svg"])]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "Where the models disagree most" in out  # the terminal output is still printed
    doc = json.loads(paths["json"].read_text())
    assert len(doc["tokens"]) > 4
    return doc, paths


def test_diff_html_numbers_equal_the_json(diff_outputs):
    doc, paths = diff_outputs
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>\n<!-- ce-inspect report: diff")
    page = parse(html)
    checked = check_diff_fields(page, doc)
    rows = top_worst(doc["tokens"], 4)
    assert checked >= 10 * len(rows) + 15  # the ten figures of each table row, and the summary
    table = {p.rsplit(".", 1)[0] for p, _ in page.fields if p.endswith(".kl")}
    assert table == {f"tokens.{doc['tokens'].index(t)}" for t in rows}  # the 4 largest KL, no other
    fields = {p for p, _ in page.fields}
    assert {"summary.kl_mean", "summary.dnll_mean", "summary.kl_max", "summary.same_top1", "summary.count"} <= fields
    check_diff_tips(page, doc)
    assert set(page.stray) <= {"99.9"}  # only the label of a quantile, no figure outside a data-f element
    assert json.loads(page.scripts["ce-inspect-diff"]) == doc
    assert "https://" not in html and "ce-inspect diff -m" in html


def test_diff_markdown_tables_equal_the_json(diff_outputs):
    from markdown_it import MarkdownIt

    doc, paths = diff_outputs
    md = paths["md"].read_text()
    assert md.startswith("<!-- ce-inspect report: diff")
    tables = tables_of(MarkdownIt("commonmark").enable("table").render(md))
    summary = {row[0]: row[1] for row in tables[0][1:]}
    s = doc["summary"]
    assert summary["scored tokens"] == str(s["count"]) == str(len(doc["tokens"]))
    assert summary["mean KL(ref‖cand)"] == f"{s['kl_mean']:.6f}"
    assert summary["mean ΔNLL (cand − ref)"] == f"{s['dnll_mean']:.6f}"
    assert summary["KL max"] == f"{max(t['kl'] for t in doc['tokens']):.6f}"  # an independent maximum
    assert summary["same top-1"] == str(sum(t["same_top1"] for t in doc["tokens"]))
    rows = tables[1][1:]
    want = top_worst(doc["tokens"], 4)
    assert len(rows) == len(want)
    for row, t in zip(rows, want):
        assert len(row) == 12  # no `|` in a token split a cell
        r, c = t["ref"], t["cand"]
        assert row[:10] == [
            str(t["index"]),
            shown(t["token"], r["special"], r.get("bytes")),
            f"{t['kl']:.6f}",
            f"{t['dnll']:.4f}",
            f"{r['prob']:.4f}",
            f"{c['prob']:.4f}",
            f"{r['loss']:.4f}",
            f"{c['loss']:.4f}",
            str(r["rank"]),
            str(c["rank"]),
        ]
        assert row[10].startswith(top_of(r)) and row[11].startswith(top_of(c))
        assert row[11].endswith("≠") == (not t["same_top1"])


def test_diff_svg_is_the_terminal_output(diff_outputs):
    doc, paths = diff_outputs
    svg = paths["svg"].read_text()
    assert svg.startswith("<!-- ce-inspect report: diff -->")
    ET.fromstring(svg)
    assert "@font-face" not in svg
    assert f"{doc['summary']['kl_mean']:.6f}" in svg


@pytest.fixture
def hostile_diff(diff_outputs):
    doc = copy.deepcopy(diff_outputs[0])
    k = max(range(len(doc["tokens"])), key=lambda i: doc["tokens"][i]["kl"])  # in the table and the strip
    t = doc["tokens"][k]
    t["token"] = t["ref"]["top_token"] = t["cand"]["top_token"] = HOSTILE
    for side in ("ref", "cand"):
        t[side].pop("bytes", None)
        t[side].pop("top_bytes", None)
    doc["notes"].append("note with </script> and \u2028")
    return doc, k


def test_hostile_tokens_stay_text_in_diff_reports(hostile_diff):
    from markdown_it import MarkdownIt

    from ce_inspect.reports import diff_html, diff_markdown

    doc, k = hostile_diff
    html = diff_html(doc, "ce-inspect diff -a '</script>'", 4)
    page = parse(html)
    assert page.tags.count("script") == 1 and "img" not in page.tags
    assert "\u202e" not in html and "\u2028" not in html
    assert json.loads(page.scripts["ce-inspect-diff"]) == doc
    check_diff_tips(page, doc)
    assert shown(HOSTILE) in [text for _, _, text in page.tips]
    md = diff_markdown(doc, "ce-inspect diff -a '```'", 4)
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<script" not in rendered and "````console" in md
    row = next(r for r in tables_of(rendered)[1][1:] if r[0] == str(doc["tokens"][k]["index"]))
    assert len(row) == 12 and row[1] == shown(HOSTILE) and row[10].startswith(shown(HOSTILE))


@pytest.fixture
def diff_dataset_outputs(tiny_llama_dir, model_b, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths = {k: tmp_path / f"dd.{k}" for k in ("jsonl", "summary", "html", "md", "svg")}
    args = ["diff", "--input", str(data), "-m", str(tiny_llama_dir), "--model-b", str(model_b), "--device", "cpu"]
    args += ["--worst", "3", "-o", str(paths["jsonl"]), "--summary-json", str(paths["summary"])]
    args += ["--html", str(paths["html"]), "--markdown", str(paths["md"]), "--svg", str(paths["svg"])]
    assert main(args) == 0
    capsys.readouterr()
    return json.loads(paths["summary"].read_text()), paths


def test_diff_dataset_reports_equal_the_summary(diff_dataset_outputs):
    from markdown_it import MarkdownIt

    doc, paths = diff_dataset_outputs
    page = parse(paths["html"].read_text())
    checked = check_diff_fields(page, doc)
    assert checked >= 5 * (len(doc["worst_by_kl"]) + len(doc["worst_by_dnll"])) + 15
    assert {"examples", "summary.kl_mean", "worst_by_kl.0.kl_mean", "worst_by_dnll.0.dnll_mean"} <= {
        p for p, _ in page.fields
    }
    assert set(page.stray) <= {"99.9"}
    assert json.loads(page.scripts["ce-inspect-diff-summary"]) == doc
    tables = tables_of(MarkdownIt("commonmark").enable("table").render(paths["md"].read_text()))
    summary = {row[0]: row[1] for row in tables[0][1:]}
    assert summary["examples"] == str(len(ROWS)) and summary["mean KL(ref‖cand)"] == f"{doc['summary']['kl_mean']:.6f}"
    for table, key in ((tables[1], "worst_by_kl"), (tables[2], "worst_by_dnll")):
        assert [r[0] for r in table[1:]] == [str(e["line"]) for e in doc[key]]
        for row, e in zip(table[1:], doc[key]):
            assert row[2:] == [
                str(e["count"]),
                f"{e['kl_mean']:.6f}",
                f"{e['dnll_mean']:.4f}",
                f"{e['same_top1_pct']:.4f}",
            ]
    ids = [r[1] for r in tables[1][1:]]
    assert all("<" not in i or i == "b<i>" for i in ids)  # the id `b<i>` is text, not markup
    svg = paths["svg"].read_text()
    assert svg.startswith("<!-- ce-inspect report: diff_summary -->")
    ET.fromstring(svg)


AUDIT_ROWS = [
    {"id": "fine", "prompt": "Where is it?", "answer": " Here, in the north."},
    {"id": HOSTILE, "input_ids": [1, 40, 41, 42, 43], "labels": [-100] * 5},  # trains nothing
    {"id": "bb", "input_ids": [1, 1, 40, 41, 42, 43], "labels": [-100, -100, -100, 41, 42, 43]},  # BOS twice
]


def printed(text: str) -> str:
    """How a record id is shown: as it is, with control and format characters escaped."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def expected_audit(path: str, value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


@pytest.fixture
def audit_outputs(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "audit.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in AUDIT_ROWS))
    paths = {k: tmp_path / f"a.{k}" for k in ("html", "md", "svg")}
    args = ["audit", str(data), "-m", str(tiny_llama_dir), "--device", "cpu", "--json"]
    args += ["--html", str(paths["html"]), "--markdown", str(paths["md"]), "--svg", str(paths["svg"])]
    assert main(args) == 3  # a --fail-on check failed: every report is written all the same
    out, _ = capsys.readouterr()
    doc = json.loads(out)
    assert {"no-trained-tokens", "bos"} <= set(doc["failed_checks"])
    return doc, paths


def test_audit_html_equals_the_json(audit_outputs):
    doc, paths = audit_outputs
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>\n<!-- ce-inspect report: audit")
    page = parse(html)
    assert page.tags.count("script") == 1 and "img" not in page.tags
    checked = check_diff_fields(page, doc, expected_audit)
    fields = {p for p, _ in page.fields}
    for k, c in enumerate(doc["checks"]):
        assert {f"checks.{k}.failed", f"checks.{k}.checked"} <= fields
        assert {f"checks.{k}.records.{j}.line" for j in range(len(c["records"]))} <= fields
        assert {f"checks.{k}.examples.{j}.line" for j in range(len(c["examples"]))} <= fields
    assert checked >= 2 * len(doc["checks"])
    for field, tip, text in page.tips:  # the offending records' tokens, with their labels
        tok = resolve(doc, field)
        assert text == shown(tok["token"], tok["special"]) and f"label {tok['label']}" in tip
        assert ("OFFENDING" in tip) == tok["offending"]
    n_tokens = sum(len(e["tokens"]) for c in doc["checks"] for e in c["examples"])
    assert len(page.tips) == n_tokens > 0
    assert page.stray == []
    assert json.loads(page.scripts["ce-inspect-audit"]) == doc
    assert "\u202e" not in html and "<img" not in html  # the hostile record id stayed text


def test_audit_markdown_equals_the_json(audit_outputs):
    from markdown_it import MarkdownIt

    doc, paths = audit_outputs
    md = paths["md"].read_text()
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<script" not in rendered
    tables = tables_of(rendered)
    rows = tables[0][1:]
    assert [r[0] for r in rows] == [c["name"] for c in doc["checks"]]
    for row, c in zip(rows, doc["checks"]):
        assert len(row) == 6  # the hostile id's `|` did not split a cell
        assert row[2:4] == [str(c["checked"]), str(c["failed"])]
        want = ", ".join(f"{r['line']}" + (f" ({printed(str(r['id']))})" if r["id"] else "") for r in c["records"])
        assert row[5] == want
    loss = {r[0]: r[1] for r in tables[1][1:]}
    assert loss["token-weighted mean loss"] == f"{doc['loss']['token_weighted_mean_loss']:.4f}"
    examples = [(c["name"], str(e["line"])) for c in doc["checks"] for e in c["examples"]]
    assert [(r[0], r[1]) for r in tables[2][1:]] == examples


def test_audit_svg_is_the_terminal_output(audit_outputs):
    _, paths = audit_outputs
    svg = paths["svg"].read_text()
    assert svg.startswith("<!-- ce-inspect report: audit -->")
    ET.fromstring(svg)
    assert "no-trained-tokens" in svg


@pytest.mark.parametrize(
    "args",
    [
        ["diff", "-m", "a", "--model-b", "b", "-p", "x", "-a", " y"],
        ["diff", "-m", "a", "--model-b", "b", "--input", "data.jsonl", "-o", "out.jsonl"],
        ["audit", "data.jsonl", "-m", "a"],
    ],
)
@pytest.mark.parametrize("flag", ["--html", "--svg", "--markdown"])
def test_bad_diff_or_audit_report_path_fails_before_loading(args, flag, tmp_path, capsys, no_load, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    code = main([*args, flag, str(tmp_path / "missing" / "r.out")])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.startswith(f"Error: {flag} ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.jsonl").exists()


def test_diff_dataset_markdown_cannot_share_stdout_with_the_lines(tmp_path, capsys, no_load, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert main(["diff", "-m", "a", "--model-b", "b", "--input", "data.jsonl", "--markdown", "-"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("Error: ") and err.count("\n") == 1
