"""The JSON contract: real outputs hold exactly the keys the TypedDicts declare, validate against the
committed JSON Schema files, and read back through ``from_dict`` unchanged.

Declared keys come from the types themselves (``__required_keys__``/``__optional_keys__``), and every
declared key must turn up in at least one output below, so the types cannot drift from what is written
in either direction.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path

import pytest
from conftest import byte_tokenizer

from ce_inspect import Layout, ScoreOptions, score, score_messages
from ce_inspect import contract as wire
from ce_inspect.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And the cat?"},
    {"role": "assistant", "content": "It sleeps."},
]
# ChatML whose assistant turns are marked with {% generation %} ...
MARKED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ... and one whose generation block is empty, so the mask marks nothing and is reported unused.
EMPTY_MARK = MARKED.replace(
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
    "{% generation %}{% endgeneration %}{{ message['content'] + '<|im_end|>' }}",
)


def _json(d):
    return json.loads(wire.dumps(d))  # what a consumer parses


@pytest.fixture(scope="module")
def run_documents(tiny_llama, tiny_llama_dir, tmp_path_factory):
    """``run``'s document for each shape of example, keyed by what it shows."""
    lm = tiny_llama
    docs = {
        "pair": score(lm, "Where is the capital of China?", " Beijing.").to_dict(),
        "chat": score(lm, "Hi", "Hello.", layout=Layout(chat=True, system="Be brief.")).to_dict(),
        "messages": score_messages(lm, CONVERSATION).to_dict(),
        "messages last turn": score_messages(lm, CONVERSATION, last_turn=True).to_dict(),
        "joint boundary": score(lm, "x\n\n", "y", layout=Layout(tokenization="joint")).to_dict(),
        "separate boundary": score(lm, "Answer: ", "the cat").to_dict(),
        "top-k": score(lm, "Q", " A.", options=ScoreOptions(top_k=3)).to_dict(),
        "verify": score(lm, "Q", " A.", options=ScoreOptions(verify=True)).to_dict(),
        "entropy": score(lm, "Q", " A.", options=ScoreOptions(entropy=True)).to_dict(),
        "reduction none": score(lm, "Q", " A.", options=ScoreOptions(reduction="none")).to_dict(),
        "reduction sum": score(lm, "Q", " A.", options=ScoreOptions(reduction="sum")).to_dict(),
        # Byte-level pieces of characters that do not decode on their own carry their bytes.
        "bytes": score(lm, "Q", " \U0001f600\u4e2d", options=ScoreOptions(top_k=3)).to_dict(),
    }
    for name, template in (("template mask", MARKED), ("template mask unused", EMPTY_MARK)):
        marked = dataclasses.replace(lm, tokenizer=byte_tokenizer(chat_template=template))
        docs[name] = score_messages(marked, CONVERSATION).to_dict()
    assert docs["joint boundary"]["layout"]["boundary"]["differs"]
    assert docs["template mask"]["layout"]["template_mask"]["used"] is True
    assert docs["template mask unused"]["layout"]["template_mask"]["used"] is False
    # And what the command line itself prints.
    messages = tmp_path_factory.mktemp("contract") / "messages.json"
    messages.write_text(json.dumps(CONVERSATION))
    for name, args in (
        ("cli pair", ["-p", "Q", "-a", " A.", "--top-k", "2", "--verify"]),
        ("cli messages", ["--messages", str(messages)]),
    ):
        docs[name] = _cli_json(["run", "-m", str(tiny_llama_dir), "--json", *args])
    return {name: _json(d) for name, d in docs.items()}


def _cli_json(args: list[str]):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def batch_outputs(tiny_llama_dir, tmp_path_factory):
    """Batch lines (with and without the sequence view, pairs and conversations) and summaries."""
    folder = tmp_path_factory.mktemp("contract-batch")
    data = folder / "data.jsonl"
    rows = [
        {"id": "a", "prompt": "Where is the capital of China?", "answer": " Beijing."},
        {"id": 7, "messages": CONVERSATION},
        {"prompt": "x", "answer": ""},  # skipped: nothing to score
        {"prompt": "Q", "answer": " A."},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lines, summaries = [], []
    for k, extra in enumerate([[], ["--no-sequence", "--top-k", "2", "--verify"]]):
        out = folder / f"out{k}.jsonl"
        base = ["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--skip-invalid", *extra]
        assert main(base) == 0
        lines += [json.loads(line) for line in out.read_text().splitlines()]
        # Resumed with nothing left to score: a summary of lines read back only.
        for again in (["--resume"], ["--force", "--batch-size", "2"]):
            summary = folder / f"summary{k}{again[0]}.json"
            assert main(base + again + ["--summary-json", str(summary)]) == 0
            summaries.append(json.loads(summary.read_text()))
    assert {("sequence" in d) for d in lines} == {True, False}
    assert all(s["skipped"] for s in summaries)
    # The other record formats and tokenizations: text (whole and in windows), pre-tokenized, TRL's split.
    others = {
        "text": ([{"text": "the cat sat on the mat"}], []),
        "windows": ([{"text": "the cat sat on the mat " * 30}], ["--stride", "64"]),
        "rolling": (
            [{"text": "the cat sat on the mat " * 30}, {"text": "the mat"}],
            ["--rolling", "--rolling-window", "64", "--entropy", "--bootstrap", "20"],
        ),
        "tokenized": ([{"input_ids": [1, 40, 41, 42, 2], "labels": [-100, -100, 41, 42, 2]}], []),
        "trl pair": ([{"prompt": "Q: ", "completion": "A."}], ["--tokenization", "trl"]),
        "trl text": ([{"text": "the cat sat"}], ["--tokenization", "trl"]),
        "trl windows": ([{"text": "the cat sat on the mat " * 30}], ["--tokenization", "trl", "--stride", "64"]),
        "limited": ([{"text": "the cat"}, {"text": "sat"}], ["--limit", "1"]),  # a summary with its notes
        "filtered": ([{"text": "the cat"}, {"text": "sat"}], ["--keep-below", "4", "--kept", str(folder / "kept")]),
    }
    for name, (rows, extra) in others.items():
        data = folder / f"{name}.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        out, summary = folder / f"{name}.out.jsonl", folder / f"{name}.summary.json"
        base = ["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--summary-json", str(summary)]
        assert main(base + extra) == 0, name
        lines += [json.loads(line) for line in out.read_text().splitlines()]
        summaries.append(json.loads(summary.read_text()))
    import gzip  # a compressed data set: the summary's data names its codec

    packed, summary = folder / "packed.jsonl.gz", folder / "packed.summary.json"
    packed.write_bytes(gzip.compress(json.dumps({"text": "the cat"}).encode() + b"\n"))
    assert main(["batch", str(packed), "-m", str(tiny_llama_dir), "-o", str(folder / "packed.out.jsonl"),
                 "--summary-json", str(summary)]) == 0  # fmt: skip
    summaries.append(json.loads(summary.read_text()))
    kinds = {d["layout"]["kind"] for d in lines}
    assert {"pair", "chat", "text", "tokenized", "trl"} <= kinds, kinds
    return lines, summaries


# --- key-for-key, from the types alone ------------------------------------------------------------------


def _hints(tp):
    return typing.get_type_hints(tp)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def check_keys(tp, value, where: str, seen: set[tuple[str, str]]) -> None:
    """``value`` holds, at every level, the required keys of its TypedDict and no undeclared one."""
    if typing.is_typeddict(tp):
        assert isinstance(value, dict), where
        required, optional = tp.__required_keys__, tp.__optional_keys__
        assert required <= value.keys(), f"{where}: missing {sorted(required - value.keys())}"
        assert value.keys() <= required | optional, f"{where}: undeclared {sorted(value.keys() - required - optional)}"
        hints = _hints(tp)
        for key, item in value.items():
            seen.add((tp.__name__, key))
            check_keys(hints[key], item, f"{where}.{key}", seen)
    elif typing.get_origin(tp) is list:
        assert isinstance(value, list), where
        for k, item in enumerate(value):
            check_keys(typing.get_args(tp)[0], item, f"{where}[{k}]", seen)
    elif _is_union(tp) and isinstance(value, dict):
        # The one TypedDict alternative whose literal tags (kind, used) the value carries.
        fits = []
        for option in typing.get_args(tp):
            if typing.is_typeddict(option) and all(
                value.get(key) in typing.get_args(hint)
                for key, hint in _hints(option).items()
                if typing.get_origin(hint) is typing.Literal and len(typing.get_args(hint)) == 1
            ):
                fits.append(option)
        assert len(fits) == 1, f"{where}: {value.keys()} fits {fits}"
        seen.add((tp.__name__ if hasattr(tp, "__name__") else str(tp), fits[0].__name__))
        check_keys(fits[0], value, where, seen)


def declared(tp, out: set[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
    """Every (TypedDict, key) reachable from ``tp``."""
    out = set() if out is None else out
    if typing.is_typeddict(tp):
        new = {(tp.__name__, key) for key in _hints(tp)} - out
        out |= new
        if new:
            for hint in _hints(tp).values():
                declared(hint, out)
    for arg in typing.get_args(tp):
        if not isinstance(arg, (str, int, bool)) and arg is not None:
            declared(arg, out)
    return out


def test_run_documents_hold_exactly_the_declared_keys(run_documents):
    seen: set[tuple[str, str]] = set()
    for name, doc in run_documents.items():
        check_keys(wire.ResultDict, doc, name, seen)
    missing = declared(wire.ResultDict) - seen
    # Layouts only data-set records have (text, pre-tokenized, TRL's) are the batch test's to cover.
    missing = {
        (t, k)
        for t, k in missing
        if not t.startswith(("TextLayout", "TokenizedLayout", "TrlLayout", "Windows", "Rolling", "LmEvalLayout"))
    }
    assert missing == set(), "declared but never written"


def test_batch_lines_and_summaries_hold_exactly_the_declared_keys(batch_outputs):
    lines, summaries = batch_outputs
    seen: set[tuple[str, str]] = set()
    for k, line in enumerate(lines):
        check_keys(wire.BatchLineDict, line, f"line {k}", seen)
    for k, summary in enumerate(summaries):
        check_keys(wire.BatchSummaryDict, summary, f"summary {k}", seen)
    missing = (declared(wire.BatchLineDict) | declared(wire.BatchSummaryDict)) - seen
    # Pair-only or chat-only layouts, template masks and tokens' bytes are the run test's to cover.
    # lm-eval's request is `choices`'s (tests/test_contract.py, the choices documents).
    missing = {
        (t, k) for t, k in missing if not t.startswith(("TemplateMask", "Boundary", "LmEvalLayout")) and k != "bytes"
    }
    assert missing == set(), "declared but never written"


def test_key_check_catches_a_missing_and_an_extra_key(run_documents):
    doc = json.loads(json.dumps(run_documents["pair"]))
    del doc["summary"]["mean"]
    with pytest.raises(AssertionError, match="missing"):
        check_keys(wire.ResultDict, doc, "doc", set())
    doc = json.loads(json.dumps(run_documents["messages"]))
    doc["layout"]["extra"] = 1
    with pytest.raises(AssertionError):
        check_keys(wire.ResultDict, doc, "doc", set())


# --- from_dict ------------------------------------------------------------------------------------------


def test_from_dict_round_trips_every_run_document(run_documents):
    for name, doc in run_documents.items():
        parsed = wire.ScoreResult.from_dict(doc)
        assert parsed.to_dict() == doc, name
        assert [t.loss for t in parsed.tokens] == [t["loss"] for t in doc["tokens"]]


def test_batch_lines_read_back_into_the_same_line(batch_outputs):
    from ce_inspect.dataset import Entry, output_line

    for doc in batch_outputs[0]:
        line, rid, parsed = wire.batch_line_from_dict(doc)
        rebuilt = output_line(Entry(line, rid), parsed, sequence="sequence" in doc, settings=doc["settings"])
        assert rebuilt == doc


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["summary"].pop("count"), "document.summary: missing 'count'"),
        (lambda d: d["tokens"][0].update(colour="red"), "document.tokens[0]: unexpected key 'colour'"),
        (lambda d: d["tokens"][0].update(rank=True), "document.tokens[0].rank: expected integer, not boolean"),
        (lambda d: d["summary"].update(mean="0.5"), "document.summary.mean: expected a number, not string"),
        (lambda d: d["layout"].update(kind="prose"), "document.layout: none of its forms fits"),
        (lambda d: d.update(schema_version=2), "not a schema_version 1 document"),
    ],
)
def test_from_dict_refuses_what_is_not_the_contract(run_documents, edit, words):
    doc = json.loads(json.dumps(run_documents["pair"]))
    edit(doc)
    with pytest.raises(ValueError) as info:
        wire.ScoreResult.from_dict(doc)
    assert words in str(info.value)


# --- each field declared once ----------------------------------------------------------------------------


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_wire_object_is_its_typeddict():
    """A WireObject's TypedDict declares its wire fields: each dataclass field is a key (or marked NOT_ON_WIRE),
    and each key that is not a field is a figure derived from them (a property or a class constant)."""
    from ce_inspect.audit import AuditReport, CheckResult, Finding, ShownFinding, TokenView
    from ce_inspect.audit.summary import RecordRef
    from ce_inspect.contract.wire import WireObject
    from ce_inspect.data import DataInfo
    from ce_inspect.dataset import BatchStats, DatasetSummary, ExampleStats, Skipped, WorstToken
    from ce_inspect.diff import DiffDatasetSummary, DiffResult, TokenDiff

    objects = set(_subclasses(WireObject))
    assert {wire.Alternative, wire.TokenScore, wire.SequenceToken, wire.Summary, wire.TurnSummary} <= objects
    assert wire.ScoreResult in objects
    assert {DataInfo, WorstToken, ExampleStats, Skipped, BatchStats, DatasetSummary} <= objects
    assert {Finding, TokenView, ShownFinding, RecordRef, CheckResult, AuditReport} <= objects
    assert {TokenDiff, DiffResult, DiffDatasetSummary} <= objects
    for cls in objects:
        keys = {cls.wire_names.get(key, key) for key in typing.get_type_hints(cls.wire_type)}
        assert set(cls.wire_names) <= set(typing.get_type_hints(cls.wire_type)), cls
        every = {f.name for f in dataclasses.fields(cls)}
        fields = {f.name for f in dataclasses.fields(cls) if f.metadata.get("wire", True)}
        assert fields <= keys, f"{cls.__name__}: not in {cls.wire_type.__name__}: {fields - keys}"
        for name in keys - fields:
            assert name not in every, f"{cls.__name__}.{name} is marked NOT_ON_WIRE but is a key"
            static = inspect.getattr_static(cls, name)
            assert isinstance(static, (property, int, str)), f"{cls.__name__}.{name}"


def test_documents_keep_their_key_order(run_documents):
    """Objects list their required keys in their TypedDict's order, then the optional ones they hold; run's
    document alone has ``sequence`` right after ``summary``."""
    doc = run_documents["cli pair"]
    assert list(doc) == [
        "schema_version", "model", "device", "dtype", "versions", "layout", "tokens", "summary", "sequence", "notes",
        "turns",
    ]  # fmt: skip
    for tp, obj in [
        (wire.TokenDict, doc["tokens"][0]),
        (wire.AlternativeDict, doc["tokens"][0]["top_k"][0]),
        (wire.SummaryDict, doc["summary"]),
        (wire.SequenceTokenDict, doc["sequence"][0]),
        (wire.TurnDict, run_documents["messages"]["turns"][0]),
        *((wire.TokenDict, t) for t in run_documents["bytes"]["tokens"] if "bytes" in t),
    ]:
        keys = list(typing.get_type_hints(tp))
        required = [k for k in keys if k in tp.__required_keys__]
        assert list(obj) == required + [k for k in keys if k not in tp.__required_keys__ and k in obj], tp


# --- the JSON Schema files ------------------------------------------------------------------------------


def test_committed_schemas_are_what_the_types_generate(tmp_path):
    from ce_inspect.contract import schema

    assert schema.main(["--check", str(ROOT / "schema")]) == 0
    for name, (root, title) in schema.DOCUMENTS.items():
        assert (ROOT / "schema" / name).read_text(encoding="utf-8") == schema.render(root, title)


def _validator(name: str):
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads((ROOT / "schema" / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def test_real_outputs_validate_against_the_schemas(run_documents, batch_outputs):
    run, line, summary = (
        _validator(n) for n in ("run.schema.json", "batch-line.schema.json", "batch-summary.schema.json")
    )
    for name, doc in run_documents.items():
        assert not list(run.iter_errors(doc)), name
    for doc in batch_outputs[0]:
        assert not list(line.iter_errors(doc))
    for doc in batch_outputs[1]:
        assert not list(summary.iter_errors(doc))
    # The schemas are closed and typed: they are not satisfied by anything.
    doc = json.loads(json.dumps(run_documents["messages"]))
    doc["layout"]["template_mask"] = {"used": True}
    assert list(run.iter_errors(doc))
    doc = json.loads(json.dumps(run_documents["pair"]))
    doc["tokens"][0]["extra"] = 1
    assert list(run.iter_errors(doc))
    doc = json.loads(json.dumps(batch_outputs[1][0]))
    doc["batching"]["batches"] = 1.5
    assert list(summary.iter_errors(doc))


def test_resume_reads_lines_through_the_contract(batch_outputs, tmp_path):
    from ce_inspect.dataset import read_resume
    from ce_inspect.errors import ResumeError

    lines = [d for d in batch_outputs[0] if "sequence" not in d]  # --no-sequence lines resume too
    full = {d["line"]: d for d in batch_outputs[0] if "sequence" in d and d["layout"]["kind"] in ("pair", "chat")}
    path = tmp_path / "out.jsonl"
    path.write_text("".join(wire.dumps(d) + "\n" for d in lines))
    state = read_resume(path)
    assert sorted(state.examples) == [d["line"] for d in lines]
    for d in lines:
        stats = state.examples[d["line"]]
        assert (stats.id, stats.count) == (d["id"], len(d["tokens"]))
        # The same input line written with its sequence view: as many positions as the resumed count.
        assert stats.sequence_tokens == len(full[d["line"]]["sequence"]) > 0
        assert stats.nll_sum == pytest.approx(-sum(t["logprob"] for t in d["tokens"]))
    edited = json.loads(json.dumps(lines[0]))
    edited["summary"]["count"] = str(edited["summary"]["count"])
    path.write_text(wire.dumps(edited) + "\n" + wire.dumps(lines[1]) + "\n")
    with pytest.raises(ResumeError, match=r"line 1 of .*summary.count: expected integer, not string"):
        read_resume(path)


# --- the other commands' documents: diff (pair and data set) and audit (report and record lines) ----------


@pytest.fixture(scope="module")
def other_documents(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract-other")
    data = folder / "data.jsonl"
    rows = [
        {"id": "a", "prompt": "Where is it?", "answer": " Here."},
        {"id": "b", "messages": CONVERSATION},
        {"id": "c", "input_ids": [1, 40, 41, 42, 2], "labels": [-100, -100, 41, 42, -100]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model = ["-m", str(tiny_llama_dir), "--dtype-b", "bfloat16"]
    docs = {
        "diff": _cli_json(["diff", *model, "-p", "Q: 2+2=", "-a", " 4", "--json"]),
        "diff messages": _cli_json(["diff", *model, "--messages", str(_write(folder, CONVERSATION)), "--json"]),
    }
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    lines, summary = folder / "diff.jsonl", folder / "diff-summary.json"
    assert main(["diff", *model, "--input", str(pairs), "-o", str(lines), "--summary-json", str(summary)]) == 0
    docs["diff line"] = json.loads(lines.read_text().splitlines()[0])
    docs["diff summary"] = json.loads(summary.read_text())
    records = folder / "audit.jsonl"
    docs["audit"] = _cli_json(
        ["audit", str(data), "-m", str(tiny_llama_dir), "--no-model", "--fail-on", "none", "--json", "-o", str(records)]
    )
    docs["audit record"] = json.loads(records.read_text().splitlines()[0])
    docs["audit limited"] = _cli_json(
        ["audit", str(data), "-m", str(tiny_llama_dir), "--no-model", "--fail-on", "none", "--json", "--limit", "1"]
    )
    assert docs["audit limited"]["notes"]
    return docs


def _write(folder: Path, conversation) -> Path:
    path = folder / "messages.json"
    path.write_text(json.dumps(conversation))
    return path


@pytest.mark.parametrize(
    ("name", "schema", "type_name"),
    [
        ("diff", "diff.schema.json", "DiffDict"),
        ("diff messages", "diff.schema.json", "DiffDict"),
        ("diff summary", "diff-summary.schema.json", "DiffDatasetDict"),
        ("audit", "audit.schema.json", "AuditDict"),
        ("audit limited", "audit.schema.json", "AuditDict"),
        ("audit record", "audit-record.schema.json", "AuditRecordLineDict"),
    ],
)
def test_diff_and_audit_documents_hold_their_types_and_schemas(other_documents, name, schema, type_name):
    from ce_inspect import diff as _  # noqa: F401 - the module, for its types
    from ce_inspect.contract import DiffDatasetDict, DiffDict

    types_ = {"DiffDict": DiffDict, "DiffDatasetDict": DiffDatasetDict}
    tp = types_.get(type_name) or getattr(wire, type_name)
    doc = other_documents[name]
    check_keys(tp, doc, name, set())
    errors = sorted(_validator(schema).iter_errors(doc), key=str)
    assert not errors, errors[0]


def test_diff_lines_are_diff_documents_with_their_record(other_documents):
    from ce_inspect.contract import DiffLineDict

    line = other_documents["diff line"]
    assert (line["id"], line["line"]) == ("a", 1)
    check_keys(DiffLineDict, line, "diff line", set())
    errors = sorted(_validator("diff-line.schema.json").iter_errors(line), key=str)
    assert not errors, errors[0]


# --- choices: its line (a question) and its summary ---------------------------------------------------------


def test_choices_lines_and_summary_hold_exactly_the_declared_keys(tiny_llama_dir, tmp_path):
    """Pairs under lm-eval's request, run's separate split, and a chat context: every declared key written."""
    rows = [
        {"id": "a", "prompt": "The cat sat on the", "choices": [" mat", " hat that is red"], "label": 0},
        {"query": "Q: 2+2=\nA:", "choices": [" 4", "5"], "gold": 1},
        {"messages": [{"role": "user", "content": "Hi"}], "choices": ["Hello.", "Go away."], "label": 0},
        {"prompt": "x", "choices": ["only one"], "label": 0},
    ]
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lines, summaries = [], []
    for k, extra in enumerate(([], ["--tokenization", "separate", "--top-k", "2"], ["--mutual-info"])):
        out, summary = tmp_path / f"{k}.jsonl", tmp_path / f"{k}.json"
        args = ["choices", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--summary-json", str(summary)]
        assert main([*args, "--skip-invalid", *extra]) == 0
        lines += [json.loads(line) for line in out.read_text().splitlines()]
        summaries.append(json.loads(summary.read_text()))
    seen: set[tuple[str, str]] = set()
    for k, line in enumerate(lines):
        check_keys(wire.ChoicesLineDict, line, f"line {k}", seen)
        assert not sorted(_validator("choices-line.schema.json").iter_errors(line), key=str)
    for k, summary in enumerate(summaries):
        check_keys(wire.ChoicesSummaryDict, summary, f"summary {k}", seen)
        assert not sorted(_validator("choices-summary.schema.json").iter_errors(summary), key=str)
    missing = (declared(wire.ChoicesLineDict) | declared(wire.ChoicesSummaryDict)) - seen
    # Other layouts and their parts are run's and batch's tests' to cover.
    others = ("TemplateMask", "Boundary", "TextLayout", "TokenizedLayout", "TrlLayout", "Windows", "Rolling")
    others += ("PairLayout",)
    skip = ("bytes", "top_bytes", "entropy", "mean_entropy")  # a token's bytes, --entropy: run's and batch's to cover
    missing = {(t, k) for t, k in missing if not t.startswith(others) and k not in skip}
    assert missing == set(), "declared but never written"
    assert {line["choices"][0]["layout"]["kind"] for line in lines} == {"lm-eval", "pair", "chat"}
