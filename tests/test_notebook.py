"""Notebooks (issue 20): every result shows itself as HTML (``_repr_html_``: the report's strip and summary in
a fragment that styles only itself) and becomes a DataFrame (``to_pandas()``) holding the figures of its
JSON document; data-set summaries read their output lines back. docs/notebook.md runs as a test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ce_inspect as ci
from ce_inspect.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"id": "a", "prompt": "Where is it?", "answer": " Here, in the north."},
    {"id": "b", "prompt": "Count:", "answer": " one two three"},
    {"id": "c", "prompt": "Say hi", "answer": " hi"},
]


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return ci.load(str(tiny_llama_dir), device="cpu")


def style_rules(fragment: str) -> list[str]:
    css = re.search(r"<style>(.*?)</style>", fragment, re.S)[1]
    return [sel.strip() for sel in re.findall(r"([^{}]+)\{[^{}]*\}", css)]


def test_a_run_result_is_its_strip_and_summary_scoped_to_itself(lm):
    result = ci.score(lm, "Where is it?", " Here, in the north.")
    html = result._repr_html_()
    assert html.startswith('<div class="ce-nb">') and "<html" not in html and "<body" not in html
    # every rule applies inside the fragment only: a notebook's own styles are left alone
    for selector in style_rules(html):
        assert all(part.strip().startswith(".ce-nb") for part in selector.split(",")), selector
    spans = re.findall(r'<span class="t [^"]*" tabindex="0" data-tip="([^"]*)"', html)
    assert len(spans) == len(result.sequence)  # masked prompt and scored answer, each token once
    assert f"<dt>mean loss</dt><dd>{result.summary.mean:.4f}</dd>" in html


def test_a_run_results_frame_is_a_row_per_scored_token_equal_to_torchs_cross_entropy(lm):
    result = ci.score(lm, "Where is it?", " Here, in the north.")
    df = result.to_pandas()
    assert len(df) == result.summary.count
    assert list(df["token_id"]) == [t.token_id for t in result.tokens]
    # independently: the model's logits at the positions before each scored token
    ids = torch.tensor([[t.token_id for t in result.sequence]])
    with torch.no_grad():
        logits = lm.model(ids).logits[0].float()
    positions = torch.tensor(list(df["index"])) - 1
    targets = torch.tensor(list(df["token_id"]))
    expected = torch.nn.functional.cross_entropy(logits[positions], targets, reduction="none")
    assert torch.allclose(torch.tensor(list(df["loss"])), expected, atol=1e-5)
    assert df["loss"].mean() == pytest.approx(result.summary.mean, abs=1e-6)


def test_a_data_set_summary_shows_its_figures_and_reads_its_lines_back(lm, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    summary = ci.score_dataset(lm, data, output=tmp_path / "scores.jsonl")
    html = summary._repr_html_()
    assert f"<dt>examples</dt><dd>{len(ROWS)}</dd>" in html
    assert f"{summary.token_weighted_mean_loss:.4f}" in html
    df = summary.to_pandas()
    lines = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert list(df["id"]) == [r["id"] for r in ROWS] and list(df["line"]) == [1, 2, 3]
    assert list(df["summary.mean"]) == [x["summary"]["mean"] for x in lines]
    assert "tokens" not in df.columns and "summary.bits_per_byte" in df.columns
    sums = df["summary.sum"].sum() / df["summary.count"].sum()
    assert sums == pytest.approx(summary.token_weighted_mean_loss, rel=1e-9)
    assert ci.lines_to_pandas(tmp_path / "scores.jsonl").equals(df)


def test_a_summary_whose_lines_went_nowhere_says_how_to_keep_them(lm, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    summary = ci.score_dataset(lm, data)
    with pytest.raises(InputError, match="output='lines.jsonl'"):
        summary.to_pandas()


def test_a_diff_result_frames_both_sides_and_shows_the_kl_strip(lm, tiny_llama_dir, tmp_path):
    from tests.conftest import build_model

    other = ci.load(str(build_model(tmp_path / "b", "llama", seed=1)), device="cpu")
    d = ci.diff(lm, other, "Where is it?", " Here.")
    df = d.to_pandas()
    assert list(df["kl"]) == [t.kl for t in d.tokens]
    assert (df["cand.loss"] - df["ref.loss"]).tolist() == pytest.approx(df["dnll"].tolist(), abs=1e-6)
    html = d._repr_html_()
    assert len(re.findall(r'<span class="t k\d"', html)) == len(d.tokens)


def test_a_result_without_a_renderer_shows_its_scalar_figures():
    from ce_inspect.notebook import html_fragment

    html = html_fragment("no-such-view", {"kind": "x", "summary": {"acc": 0.5, "n": 2}, "items": [1, 2]})
    assert "<th>summary.acc</th><td>0.5</td>" in html and "items" not in html


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


@pytest.mark.default_model
@pytest.mark.slow
def test_docs_notebook_runs_in_order(smollm2, models_cache, monkeypatch, tmp_path):
    """Every python block of docs/notebook.md, in order, in one namespace, in a folder with the samples."""
    import shutil

    monkeypatch.setenv("CE_INSPECT_CACHE", str(models_cache))  # the bundled model converted once
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks((ROOT / "docs" / "notebook.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    namespace: dict = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"docs/notebook.md block {k + 1}", "exec"), namespace)
        last = block.strip().splitlines()[-1].split("#")[0].strip()
        if last and "=" not in last and not last.startswith(("assert", "from", "import")):
            shown = eval(last, namespace)  # what the notebook cell displays
            if type(shown).__module__.startswith("ce_inspect"):  # a DataFrame shows itself
                assert shown._repr_html_().startswith('<div class="ce-nb">')
    assert (tmp_path / "scores.jsonl").is_file()
