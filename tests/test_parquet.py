"""`batch -o scores.parquet`: the lines as one Parquet table (figures as columns, per-token fields as list
columns, nested objects as JSON text), written whole at the end; the table read back holds the JSONL's figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ce_inspect.cli import main
from ce_inspect.dataset import flat_row

pq = pytest.importorskip("pyarrow.parquet")

ROWS = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."},
    {"id": 2, "prompt": "Caf\u00e9 ?", "answer": " Cr\u00e8me, \u4f60\u597d."},  # an int id among strings
    {"prompt": "no answer"},  # invalid: skipped, no row
    {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]},
    {"input_ids": [1, 40, 41, 42, 2], "labels": [-100, -100, 41, 42, 2]},
]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def test_the_table_holds_the_figures_of_the_jsonl_lines(capsys, tiny_llama_dir, data, tmp_path):
    jsonl, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    for out in (jsonl, parquet):
        args = ("batch", data, "-m", tiny_llama_dir, "-o", out, "--skip-invalid", "--top-k", "2", "--chat")
        code, err = _cli(capsys, *args, "--summary-json", out.with_suffix(".summary.json"))
        assert code == 0, err
    lines = [json.loads(raw) for raw in jsonl.read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(parquet)
    rows = table.to_pylist()
    assert len(rows) == len(lines) == 4 and [r["line"] for r in rows] == [1, 2, 4, 5]
    for row, line in zip(rows, lines):
        assert row["id"] == (None if line["id"] is None else str(line["id"]))
        for figure in ("mean", "sum", "count", "perplexity", "bits_per_byte", "greedy_hits", "scored_bytes"):
            assert row[figure] == line["summary"][figure], figure
        for field in ("loss", "token_id", "prob", "rank", "token", "index"):
            assert row[f"tokens.{field}"] == [t[field] for t in line["tokens"]], field
        # Each choice of top_k is a struct of every key any choice has: one a choice lacks reads back null.
        keys = ("token_id", "token", "prob", "bytes")
        assert row["tokens.top_k"] == [[{k: c.get(k) for k in keys} for c in t["top_k"]] for t in line["tokens"]]
        for nested in ("layout", "settings", "sequence"):
            assert json.loads(row[nested]) == line[nested], nested
        assert flat_row(line).keys() <= row.keys()  # every field of the line has its column
    assert table.schema.field("mean").type == "double" and str(table.schema.field("tokens.loss").type) == (
        "list<element: double>"
    )
    summary = json.loads(parquet.with_suffix(".summary.json").read_text())
    assert summary["output"] == str(parquet) and summary["examples"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging file left


def test_parquet_refuses_resume_and_an_existing_file_without_force(capsys, tiny_llama_dir, data, tmp_path):
    parquet = tmp_path / "out.parquet"
    code, err = _cli(capsys, "batch", data, "-m", tmp_path / "nope", "-o", parquet, "--resume")
    assert code == 2 and "nothing to --resume; write JSONL" in err and not parquet.exists()
    parquet.write_bytes(b"PAR1 not ours")
    code, err = _cli(capsys, "batch", data, "-m", tiny_llama_dir, "-o", parquet, "--skip-invalid")
    assert code == 1 and "already exists" in err and parquet.read_bytes() == b"PAR1 not ours"
    code, err = _cli(capsys, "batch", data, "-m", tiny_llama_dir, "-o", parquet, "--skip-invalid", "--force")
    assert code == 0 and pq.read_table(parquet).num_rows == 4


def test_without_pyarrow_the_error_is_one_line_before_the_model_loads(capsys, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` raises ImportError
    code, err = _cli(capsys, "batch", data, "-m", tmp_path / "nope", "-o", tmp_path / "out.parquet")
    assert code == 1 and "writing Parquet needs pyarrow: pip install 'ce-inspect[datasets]'" in err
    assert "Traceback" not in err and "nope" not in err and len(err.strip().splitlines()) == 1


def test_an_error_mid_run_leaves_neither_table_nor_staging_file(tiny_llama, data, tmp_path, monkeypatch):
    import ce_inspect
    from ce_inspect.dataset import batching

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batching, "check_model_unchanged", boom)
    with pytest.raises(KeyboardInterrupt, match="Parquet output is written when the run ends"):
        ce_inspect.score_dataset(tiny_llama, data, output=tmp_path / "out.parquet", skip_invalid=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
