"""The library's data-set entry points (``ce_inspect.score_dataset``, ``diff_dataset``, ``audit_dataset``) write
exactly the lines the command line writes, resumed too: both are the one runner (``ce_inspect.dataset.runner``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import build_model, write_audit_data

import ce_inspect
from ce_inspect import BatchSettings, load
from ce_inspect.cli import main
from ce_inspect.dataset import DatasetRun, Interrupted
from ce_inspect.errors import InputError, ResumeError

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "samples" / "pairs.jsonl"


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load(str(tiny_llama_dir), device="cpu", quiet=True)


@pytest.fixture(scope="module")
def cand_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("runner-cand") / "cand", seed=1)


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def _cut(path: Path, keep: int, torn: int = 30) -> None:
    """The first ``keep`` lines and a torn piece of the next, as `kill -9` leaves a file."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]) + lines[keep][:torn])


def _resumed_equals(path: Path, full: bytes, keep: int, call) -> None:
    path.write_bytes(full)
    _cut(path, keep)
    call(resume=True)
    assert path.read_bytes() == full


def test_score_dataset_writes_the_lines_batch_writes_and_resumes_them(lm, tiny_llama_dir, tmp_path, capsys):
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    code, err = _cli(capsys, "batch", PAIRS, "--model", tiny_llama_dir, "--skip-invalid", "-o", by_cli)
    assert code == 0, err
    summary = ce_inspect.score_dataset(lm, PAIRS, output=by_lib, skip_invalid=True)
    assert by_lib.read_bytes() == by_cli.read_bytes()
    lines = [json.loads(raw) for raw in by_lib.read_text().splitlines()]
    assert summary.examples == len(lines) and summary.resumed == 0 and len(summary.skipped) == 1  # the long one
    assert summary.scored_tokens == sum(line["summary"]["count"] for line in lines)

    def again(resume: bool) -> None:
        resumed = ce_inspect.score_dataset(lm, PAIRS, output=by_lib, resume=resume, skip_invalid=True)
        assert resumed.resumed == 2 and resumed.token_weighted_mean_loss == pytest.approx(
            summary.token_weighted_mean_loss, abs=1e-6
        )

    _resumed_equals(by_lib, by_cli.read_bytes(), 2, again)
    with pytest.raises(InputError, match="already exists; pass `resume` to continue it or `force`"):
        ce_inspect.score_dataset(lm, PAIRS, output=by_lib, skip_invalid=True)


def test_score_dataset_takes_a_loader_called_only_after_the_output_checks(lm, tmp_path):
    """A bad output fails before the model loads: the loader is not called."""
    out = tmp_path / "taken.jsonl"
    out.write_text("not ce-inspect's\n")
    calls = []

    def loader():
        calls.append(1)
        return lm

    with pytest.raises(InputError, match="already exists"):
        ce_inspect.score_dataset(loader, PAIRS, output=out)
    assert calls == [] and out.read_text() == "not ce-inspect's\n"
    ce_inspect.score_dataset(loader, PAIRS, output=tmp_path / "new.jsonl", skip_invalid=True)
    assert calls == [1]


def test_diff_dataset_writes_the_lines_diff_input_writes_and_resumes_them(
    lm, tiny_llama_dir, cand_dir, tmp_path, capsys
):
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    code, err = _cli(
        capsys, "diff", "-m", tiny_llama_dir, "--model-b", cand_dir, "--input", PAIRS, "--skip-invalid", "-o", by_cli
    )
    assert code == 0, err
    cand = load(str(cand_dir), device="cpu", quiet=True)
    summary = ce_inspect.diff_dataset(lm, cand, PAIRS, output=by_lib, skip_invalid=True)
    assert by_lib.read_bytes() == by_cli.read_bytes()
    assert summary.examples == len(by_lib.read_text().splitlines())

    def again(resume: bool) -> None:
        ce_inspect.diff_dataset(lm, cand, PAIRS, output=by_lib, resume=resume, skip_invalid=True)

    _resumed_equals(by_lib, by_cli.read_bytes(), 1, again)


def test_audit_dataset_writes_the_lines_audit_writes_and_resumes_them(lm, tiny_llama_dir, tmp_path, capsys):
    data = write_audit_data(tmp_path / "data.jsonl", tiny_llama_dir)
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    code, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--skip-invalid", "-o", by_cli)
    assert code == 3, err  # the planted defects trip the default gate
    report = ce_inspect.audit_dataset(lm, data, output=by_lib, skip_invalid=True)
    assert by_lib.read_bytes() == by_cli.read_bytes()
    assert report.gate_failed == ["no-trained-tokens", "eot-not-trained"]
    assert [r.id for r in report.check("loss-outlier").records] == ["outlier"]
    assert report.output == str(by_lib)

    def again(resume: bool) -> None:
        resumed = ce_inspect.audit_dataset(lm, data, output=by_lib, skip_invalid=True, resume=resume)
        assert resumed.loss["resumed"] == 3 and resumed.gate_failed == report.gate_failed

    _resumed_equals(by_lib, by_cli.read_bytes(), 4, again)


def test_audit_without_model_writes_the_lines_audit_no_model_writes(tiny_llama_dir, tmp_path, capsys):
    data = write_audit_data(tmp_path / "data.jsonl", tiny_llama_dir)
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    args = ("audit", data, "--model", tiny_llama_dir, "--no-model", "--skip-invalid", "-o", by_cli)
    code, err = _cli(capsys, *args)
    assert code == 3, err
    loaded = []

    def tokenizer():  # called once the output is checked and the data opened
        loaded.append(by_lib.exists())
        return ce_inspect.load_tokenizer(str(tiny_llama_dir))

    report = ce_inspect.audit_without_model(tokenizer, data, output=by_lib, skip_invalid=True)
    assert loaded == [False] and by_lib.read_bytes() == by_cli.read_bytes()
    assert report.gate_failed == ["no-trained-tokens", "eot-not-trained"] and report.model is None
    mine = tmp_path / "notes.jsonl"
    mine.write_text("my own notes\n")
    with pytest.raises(InputError, match="was not written by ce-inspect"):  # never replaced silently
        ce_inspect.audit_without_model(tokenizer, data, output=mine, skip_invalid=True)
    assert len(loaded) == 1 and mine.read_text() == "my own notes\n"  # refused before the tokenizer loads


def test_a_run_refuses_leftover_part_files_and_a_changed_input(lm, tmp_path):
    """The runner's checks are every command's: a leftover torchrun part file, and a resumed output that
    does not continue this input."""
    out = tmp_path / "out.jsonl"
    ce_inspect.score_dataset(lm, PAIRS, output=out, skip_invalid=True)
    part = tmp_path / ".fresh.jsonl.rank0-of-2.part"
    part.write_text("")
    with pytest.raises(InputError, match="part files of an unfinished torchrun run are next to it"):
        ce_inspect.score_dataset(lm, PAIRS, output=tmp_path / "fresh.jsonl", skip_invalid=True)
    assert not (tmp_path / "fresh.jsonl").exists()
    other = tmp_path / "other.jsonl"
    shutil.copy(PAIRS, other)
    with other.open("a") as fh:
        fh.write(json.dumps({"prompt": "One more", "answer": " line."}) + "\n")
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]))
    ce_inspect.score_dataset(lm, other, output=out, resume=True, skip_invalid=True)  # a longer input continues
    shorter = tmp_path / "shorter.jsonl"
    shorter.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:1]))
    with pytest.raises(ResumeError, match="which .* does not have"):
        ce_inspect.score_dataset(lm, shorter, output=out, resume=True, skip_invalid=True)


def test_ctrl_c_is_a_keyboard_interrupt_saying_what_the_file_keeps(lm, tmp_path):
    out = tmp_path / "out.jsonl"
    seen = []

    def progress(scan):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            def advance(examples, tokens):
                seen.append(examples)
                raise KeyboardInterrupt

            yield advance

        return bar()

    with pytest.raises(Interrupted) as caught:
        ce_inspect.score_dataset(
            lm, PAIRS, output=out, progress=progress, settings=BatchSettings(batch_size=1), skip_invalid=True
        )
    assert isinstance(caught.value, KeyboardInterrupt) and seen == [1]
    kept = out.read_text().splitlines()
    assert "complete lines are in" in caught.value.message and f"{len(kept)} complete lines" in caught.value.message
    assert all(json.loads(line) for line in kept)


def test_dataset_run_names_its_parameters():
    with pytest.raises(InputError, match="`resume` continues an `output` file"):
        DatasetRun(PAIRS, None, resume=True)
    with pytest.raises(InputError, match="give `resume` or `force`, not both"):
        DatasetRun(PAIRS, "x.jsonl", resume=True, force=True)
