"""The data people have (issue 20): Alpaca records, compressed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ce_inspect.cli import main
from ce_inspect.data import ALPACA_NOTE, Fields, alpaca_pair, detect_format, encode_record, parse_record
from ce_inspect.text import Layout, encode

ALPACA = [
    {"id": "with-input", "instruction": "Name a colour.", "input": "One word.", "output": " Blue."},
    {"id": "no-input", "instruction": "Say hi.", "input": "", "output": " Hi!"},
    {"id": "no-input-field", "instruction": "Count to two.", "output": " 1 2"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- Alpaca -------------------------------------------------------------------------------------------------


def test_alpaca_rule_is_llama_factorys_join():
    assert alpaca_pair("Name a colour.", "One word.", " Blue.") == ("Name a colour.\nOne word.", " Blue.")
    assert alpaca_pair("Say hi.", "", " Hi!") == ("Say hi.", " Hi!")


def test_alpaca_records_are_detected_and_read_as_pairs():
    records = [parse_record(k, obj) for k, obj in enumerate(ALPACA, 1)]
    assert [detect_format(obj) for obj in ALPACA] == ["alpaca"] * 3
    assert [(r.prompt, r.answer, r.system, r.format) for r in records] == [
        ("Name a colour.\nOne word.", " Blue.", None, "alpaca"),
        ("Say hi.", " Hi!", None, "alpaca"),
        ("Count to two.", " 1 2", None, "alpaca"),
    ]
    assert all(r.notes == (ALPACA_NOTE,) and r.error is None for r in records)
    # The Hub's tatsu-lab/alpaca also carries the rendered template as `text`: the fields win.
    assert detect_format({**ALPACA[0], "text": "Below is an instruction ..."}) == "alpaca"
    # A prompt/answer record with an `output` field stays prompt/answer.
    assert detect_format({"prompt": "p", "answer": "a", "instruction": "i", "output": "o"}) == "prompt-answer"


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"instruction": "i", "output": 3}, "field 'output' must be a string, not number"),
        ({"instruction": "i", "input": ["x"], "output": "o"}, "field 'input' must be a string, not array"),
        ({"instruction": "i", "output": "o", "system": 1}, "field 'system' must be a string, not number"),
        ({"instruction": "i"}, "missing field 'output'"),
    ],
)
def test_bad_alpaca_records_are_invalid_records(obj, error):
    record = parse_record(1, obj, Fields(), format="alpaca")
    assert record.error == error


def test_alpaca_encodes_as_the_pair_it_reads_as(tiny_llama):
    layout = Layout()
    for obj in ALPACA:
        record = parse_record(1, obj)
        got = encode_record(tiny_llama, record, layout)
        prompt, answer = alpaca_pair(obj["instruction"], obj.get("input", ""), obj["output"])
        want = encode(tiny_llama.tokenizer, prompt, answer, layout, max_length=tiny_llama.context_length)
        assert (got.input_ids, got.labels) == (want.input_ids, want.labels)
        assert got.notes == (ALPACA_NOTE, *want.notes)


def test_alpaca_system_goes_to_the_chat_template_and_needs_chat(tiny_llama):
    from ce_inspect.errors import InputError

    record = parse_record(1, {**ALPACA[0], "system": "Be brief."})
    assert record.system == "Be brief."
    chat = encode_record(tiny_llama, record, Layout(chat=True, system="ignored: the record's own wins"))
    want = encode(
        tiny_llama.tokenizer,
        "Name a colour.\nOne word.",
        " Blue.",
        Layout(chat=True, system="Be brief."),
        max_length=tiny_llama.context_length,
    )
    assert (chat.input_ids, chat.labels) == (want.input_ids, want.labels)
    assert "Be brief." in tiny_llama.tokenizer.decode(chat.input_ids)
    with pytest.raises(InputError, match="field 'system' is a system prompt.*pass `chat`"):
        encode_record(tiny_llama, record, Layout())
    # An empty system is no system prompt (LLaMA-Factory's default).
    assert parse_record(1, {**ALPACA[0], "system": ""}).system is None


def test_batch_scores_alpaca_as_run_scores_the_pair(capsys, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    for fmt in ([], ["--format", "alpaca"]):
        assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-b", "1", *fmt]) == 0
        out, err = capsys.readouterr()
        assert "format alpaca" in err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [d["id"] for d in lines] == ["with-input", "no-input", "no-input-field"]
        for line, obj in zip(lines, ALPACA):
            assert ALPACA_NOTE in line["notes"]
            prompt, answer = alpaca_pair(obj["instruction"], obj.get("input", ""), obj["output"])
            assert main(["run", "-m", str(tiny_llama_dir), "-p", prompt, "-a", answer, "--json"]) == 0
            alone = json.loads(capsys.readouterr().out)
            assert [t["token_id"] for t in line["tokens"]] == [t["token_id"] for t in alone["tokens"]]
            assert [t["loss"] for t in line["tokens"]] == pytest.approx([t["loss"] for t in alone["tokens"]], abs=1e-5)


def test_batch_alpaca_with_system_without_chat_names_the_flag(capsys, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", [{**ALPACA[0], "system": "Be brief."}])
    assert main(["batch", str(data), "-m", str(tiny_llama_dir)]) == 1
    err = capsys.readouterr().err
    assert "line 1 (id 'with-input'): field 'system' is a system prompt" in err and "pass --chat" in err
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "--chat"]) == 0


# --- compressed inputs ------------------------------------------------------------------------------------

PAIRS = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."},
    {"id": "b", "prompt": "x", "answer": " y"},
]


def _compressed(tmp_path: Path, name: str, text: str) -> Path:
    import bz2
    import gzip

    path = tmp_path / name
    opener = {".gz": gzip.open, ".bz2": bz2.open}[path.suffix]
    with opener(path, "wb") as fh:
        fh.write(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.jsonl.bz2", "d.json.gz", "d.json.bz2", "d.gz"])
def test_compressed_jsonl_and_json_read_as_the_plain_file(tmp_path, name):
    from ce_inspect.data import file_kind, open_data, read_records

    array = ".json." in name
    text = json.dumps(PAIRS) if array else "".join(json.dumps(r) + "\n" for r in PAIRS)
    path = _compressed(tmp_path, name, text)
    assert file_kind(path) == ("json" if array else "jsonl")
    records = list(read_records(path))
    assert [(r.id, r.prompt, r.answer) for r in records] == [(r["id"], r["prompt"], r["answer"]) for r in PAIRS]
    info = open_data(path)
    assert info.to_dict()["compression"] == ("gzip" if name.endswith(".gz") else "bzip2")
    assert "-compressed" in info.describe()


def test_batch_scores_a_gzipped_file_as_the_plain_one(capsys, tiny_llama_dir, tmp_path):
    plain = tmp_path / "d.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    packed = _compressed(tmp_path, "d.jsonl.gz", plain.read_text())
    docs = []
    for path in (plain, packed):
        assert main(["batch", str(path), "-m", str(tiny_llama_dir), "--no-sequence"]) == 0
        docs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [d["tokens"] for d in docs[0]] == [d["tokens"] for d in docs[1]]


def test_corrupt_compressed_data_is_one_error_line(capsys, tiny_llama_dir, tmp_path):
    not_gzip = tmp_path / "d.jsonl.gz"
    not_gzip.write_text(json.dumps(PAIRS[0]) + "\n")
    assert main(["batch", str(not_gzip), "-m", str(tiny_llama_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"{not_gzip}: not valid gzip data" in err and "Traceback" not in err
    whole = _compressed(tmp_path, "t.jsonl.bz2", "".join(json.dumps(r) + "\n" for r in PAIRS * 50))
    cut = tmp_path / "cut.jsonl.bz2"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    assert main(["batch", str(cut), "-m", str(tiny_llama_dir)]) == 1
    out, err = capsys.readouterr()
    assert f"{cut}: not valid bzip2 data" in err.splitlines()[-1]


def test_zst_without_zstandard_names_the_package(capsys, monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    assert main(["audit", str(path), "--no-model"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"Error: {path}: reading a .zst file needs the zstandard package: pip install zstandard"
    )


def test_zst_with_zstandard(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    from ce_inspect.data import read_records

    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in PAIRS).encode()))
    assert [r.id for r in read_records(path)] == ["a", "b"]


def test_compressed_parquet_is_refused(tmp_path):
    from ce_inspect.data import read_records
    from ce_inspect.errors import InputError

    path = _compressed(tmp_path, "d.parquet.gz", "x")
    with pytest.raises(InputError, match="only JSONL and JSON files are read compressed"):
        list(read_records(path))
