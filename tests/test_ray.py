"""``ce_inspect.integrations.ray.ScoreBatch``: Ray Data's ``map_batches`` with one model per actor gives the lines
``ce-inspect batch`` writes for the same records; an invalid record's reason in ``ce_error``; an actor killed
mid-run still gives every record exactly once. ``DiffBatch``, two models per actor, gives ``diff DATA``'s lines.

The Ray tests run a local cluster on the loopback with 4 CPUs: with 2, two 1-CPU actors leave no CPU for the
read task and Ray Data waits forever."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import build_model, json_close

import ce_inspect
from ce_inspect import KeepFilter, load
from ce_inspect.errors import InputError, UsageError

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
np = pytest.importorskip("numpy")
from ce_inspect.integrations.ray import DIFF_FIGURES, DiffBatch, ScoreBatch  # noqa: E402 - after the skips

CONVERSATION = [
    {"role": "user", "content": "Say hello."},
    {"role": "assistant", "content": "Hello there."},
]


def _rows() -> list[dict]:
    """Twelve records with their line number in ``n``: pairs, a conversation, non-ASCII, one invalid (line 5)."""
    rows = [
        {"n": i, "id": f"r{i}", "prompt": f"Question {i}: why?", "answer": f" Because {i} * {i}."} for i in range(1, 13)
    ]
    rows[2] = {"n": 3, "id": "chat", "messages": CONVERSATION}
    rows[4] = {"n": 5, "id": "bad", "prompt": "a record without its answer"}
    rows[7] = {"n": 8, "id": "r8", "prompt": "Caf\u00e9 ?", "answer": " Cr\u00e8me, \u4f60\u597d."}
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load(str(tiny_llama_dir), device="cpu", quiet=True)


@pytest.fixture(scope="module")
def batch_lines(lm, data) -> dict[int, dict]:
    """What `ce-inspect batch --skip-invalid` writes for the records (in out.jsonl beside them), by line."""
    out = data.parent / "out.jsonl"
    ce_inspect.score_dataset(lm, data, output=out, skip_invalid=True)
    return {d["line"]: d for d in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


@pytest.fixture(scope="module")
def model_b_dir(tmp_path_factory) -> Path:
    """A second tiny model with the same tokenizer and other weights: the candidate of the diff tests."""
    return build_model(tmp_path_factory.mktemp("ray-b"), seed=1)


@pytest.fixture(scope="module")
def lm_b(model_b_dir):
    return load(str(model_b_dir), device="cpu", quiet=True)


@pytest.fixture(scope="module")
def diff_out(lm, lm_b, data) -> Path:
    """What `ce-inspect diff DATA --skip-invalid` writes for the records (the library call the CLI makes)."""
    out = data.parent / "diff.jsonl"
    ce_inspect.diff_dataset(lm, lm_b, data, output=out, skip_invalid=True)
    return out


def _as_formats(rows: list[dict]) -> dict[str, object]:
    columns = ["n", "id", "prompt", "answer", "messages"]
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    types = [pa.int64(), pa.string(), pa.string(), pa.string(), pa.list_(message)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(zip(columns, types))))
    return {
        "pandas": pd.DataFrame(rows),
        "arrow": table,
        "dict": {c: np.array([r.get(c) for r in rows], dtype=object) for c in columns},
    }


def _column(out, kind: str, name: str) -> list:
    if kind == "pandas":
        return [None if v is None or (isinstance(v, float) and v != v) or v is pd.NA else v for v in out[name]]
    if kind == "arrow":
        return out.column(name).to_pylist()
    return [None if v is None else v for v in out[name].tolist()]


@pytest.mark.parametrize("kind", ["pandas", "arrow", "dict"])
def test_one_call_writes_batchs_own_lines_in_each_batch_format(lm, data, batch_lines, kind):
    """The whole file in one Ray batch is the batch run itself: the same token-budget batches, the same bytes."""
    score = ScoreBatch(lm, skip_invalid=True)
    batch = _as_formats(_rows())[kind]
    out = score(batch)
    ce = _column(out, kind, "ce_inspect")
    # Every scored record: the `batch` line, byte for byte (its line is its position in the file and the batch).
    assert [c for c in ce if c is not None] == (data.parent / "out.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(c) for c in ce if c is not None]
    assert _column(out, kind, "ce_error") == [None] * 4 + ["missing field 'answer'"] + [None] * 7
    assert _column(out, kind, "mean")[4] is None and _column(out, kind, "count")[4] is None
    for name in ("n", "id"):  # the input columns come back as they went in
        assert _column(out, kind, name) == [r[name] for r in _rows()]
    means = _column(out, kind, "mean")
    for line in written:
        assert means[line["line"] - 1] == line["summary"]["mean"]
        assert _column(out, kind, "sum")[line["line"] - 1] == line["summary"]["sum"]
        assert _column(out, kind, "count")[line["line"] - 1] == line["summary"]["count"]
        assert _column(out, kind, "bits_per_byte")[line["line"] - 1] == line["summary"]["bits_per_byte"]


def test_a_malformed_record_without_skip_invalid_is_one_line_naming_it(lm):
    with pytest.raises(InputError) as caught:
        ScoreBatch(lm, line_column="n")(pd.DataFrame(_rows()))
    message = str(caught.value)
    assert message == (
        "ScoreBatch: line 5 (id 'bad'): missing field 'answer' (fix the record, or pass skip_invalid=True to get "
        "the reason in ce_error)"
    )
    with pytest.raises(UsageError, match="give `layout` or its options"):
        ScoreBatch(lm, layout=ce_inspect.Layout(), chat=True)
    with pytest.raises(UsageError, match="takes a pandas DataFrame, a pyarrow Table or a dict"):
        ScoreBatch(lm)([1, 2])


def test_the_keep_column_is_batchs_filter_rule(lm, data, batch_lines):
    median = sorted(d["summary"]["mean"] for d in batch_lines.values())[5]
    out = ScoreBatch(lm, skip_invalid=True, keep_below=median, line_column="n")(pd.DataFrame(_rows()))
    keep = dict(zip(out["n"], out["keep"]))
    assert keep[5] is pd.NA  # invalid: neither kept nor dropped
    rule = KeepFilter(below=median)
    assert {n: bool(keep[n]) for n in batch_lines} == {
        n: rule.keeps(d["summary"]["mean"]) for n, d in batch_lines.items()
    }
    assert {n: d["summary"]["mean"] < median for n, d in batch_lines.items()} == {n: bool(keep[n]) for n in batch_lines}


def test_one_diff_call_writes_diffs_own_lines_and_their_figures(lm, lm_b, diff_out):
    out = DiffBatch(lm, lm_b, skip_invalid=True)(_as_formats(_rows())["arrow"])
    ce = _column(out, "arrow", "ce_inspect")
    assert [c for c in ce if c is not None] == diff_out.read_text(encoding="utf-8").splitlines()  # byte for byte
    assert _column(out, "arrow", "ce_error") == [None] * 4 + ["missing field 'answer'"] + [None] * 7
    assert all(_column(out, "arrow", name)[4] is None for name in DIFF_FIGURES)
    for line in map(json.loads, filter(None, ce)):
        for name, path in DIFF_FIGURES.items():
            want = line
            for key in path:
                want = want[key]
            assert _column(out, "arrow", name)[line["line"] - 1] == want, name
    assert _column(out, "arrow", "kl_mean")[0] > 0  # two models that differ
    assert _column(out, "arrow", "id") == [r["id"] for r in _rows()]


def test_an_invalid_record_without_skip_invalid_fails_the_diff_call_naming_it(lm, lm_b):
    with pytest.raises(InputError) as caught:
        DiffBatch(lm, lm_b, line_column="n")(pd.DataFrame(_rows()))
    assert str(caught.value) == (
        "DiffBatch: line 5 (id 'bad'): missing field 'answer' (fix the record, or pass skip_invalid=True to get "
        "the reason in ce_error)"
    )
    with pytest.raises(UsageError, match="give the candidate model: `model_b`"):
        DiffBatch(lm)


# --- on a local Ray cluster ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # The killing subclass below lives in this test module, which the workers cannot import: send it whole.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _scored_by_ray(ray, data: Path, cls, kwargs: dict, **map_args) -> list[dict]:
    ds = ray.data.read_json(str(data))
    scored = ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=3, batch_format="pandas", **map_args)
    return scored.take_all()


@pytest.mark.slow
def test_two_actors_give_batchs_lines_and_each_invalid_records_reason(ray_cluster, tiny_llama_dir, data, batch_lines):
    kwargs = {"model": str(tiny_llama_dir), "device": "cpu", "skip_invalid": True, "line_column": "n"}
    rows = _scored_by_ray(ray_cluster, data, ScoreBatch, kwargs, compute=ray_cluster.data.ActorPoolStrategy(size=2))
    assert sorted(r["n"] for r in rows) == list(range(1, 13))  # every record exactly once
    by_n = {r["n"]: r for r in rows}
    assert by_n[5]["ce_error"] == "missing field 'answer'" and by_n[5]["ce_inspect"] is None
    for n, want in batch_lines.items():
        got = json.loads(by_n[n]["ce_inspect"])
        # Ray's batches of 3 pack other forward passes than batch's one run: figures within the float32 bound.
        json_close(got, want, f"line {n}", tol=1e-5)
        assert by_n[n]["mean"] == got["summary"]["mean"] and by_n[n]["count"] == want["summary"]["count"]
    assert {r["id"] for r in rows} == {r["id"] for r in _rows()}


class _DiesOnce(ScoreBatch):
    """Kills its actor's process in the first call of the run (the marker file says it happened)."""

    def __init__(self, *, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def __call__(self, batch):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


@pytest.mark.slow
def test_an_actor_killed_mid_run_still_gives_every_record_exactly_once(
    ray_cluster, tiny_llama_dir, data, batch_lines, tmp_path
):
    marker = tmp_path / "killed"
    kwargs = {"model": str(tiny_llama_dir), "device": "cpu", "skip_invalid": True, "line_column": "n"}
    rows = _scored_by_ray(
        ray_cluster,
        data,
        _DiesOnce,
        {**kwargs, "marker": str(marker)},
        compute=ray_cluster.data.ActorPoolStrategy(size=2),
        max_restarts=-1,
        max_task_retries=-1,
    )
    assert marker.exists()  # an actor did die
    assert sorted(r["n"] for r in rows) == list(range(1, 13))
    for r in rows:
        if r["n"] in batch_lines:
            json_close(json.loads(r["ce_inspect"]), batch_lines[r["n"]], f"line {r['n']}", tol=1e-5)


@pytest.mark.slow
def test_two_actors_give_diffs_lines(ray_cluster, tiny_llama_dir, model_b_dir, data, diff_out):
    kwargs = {"model_a": str(tiny_llama_dir), "model_b": str(model_b_dir), "device": "cpu", "skip_invalid": True}
    rows = _scored_by_ray(
        ray_cluster, data, DiffBatch, {**kwargs, "line_column": "n"}, compute=ray_cluster.data.ActorPoolStrategy(size=2)
    )
    assert sorted(r["n"] for r in rows) == list(range(1, 13))
    by_n = {r["n"]: r for r in rows}
    assert by_n[5]["ce_error"] == "missing field 'answer'" and by_n[5]["ce_inspect"] is None
    for want in map(json.loads, diff_out.read_text(encoding="utf-8").splitlines()):
        got = json.loads(by_n[want["line"]]["ce_inspect"])
        json_close(got, want, f"line {want['line']}", tol=1e-5)  # other forward passes: the float32 bound
        assert by_n[want["line"]]["kl_mean"] == got["summary"]["kl_mean"]
