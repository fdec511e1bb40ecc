"""``versions``: every JSON document ce-inspect writes (each run's, each summary, each line) and every HTML and
Markdown report says which ce-inspect, torch, transformers and Python produced it, and on which device; the
values are those of this installation, asked here of importlib.metadata, torch and platform themselves."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import pytest
import torch
import transformers

from ce_inspect import ScoreResult, score
from ce_inspect.cli import main
from ce_inspect.contract import VersionsDict, joined, versions

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def installed(device: str) -> VersionsDict:
    return {
        "ce_inspect": metadata.version("ce-inspect"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def test_versions_are_this_installations():
    assert versions("cpu") == installed("cpu")
    assert versions() == installed("none")  # no model: audit --no-model
    assert versions("cpu", "cpu")["device"] == "cpu"  # two models on one device: named once
    assert versions("cpu", "mps")["device"] == "cpu / mps"
    assert joined(versions("cpu"), versions("mps"), versions("cpu"))["device"] == "cpu / mps"
    assert versions("cpu") is not versions("cpu")  # a fresh dict each time: a caller's edit changes no other


def test_library_results_carry_them(tiny_llama):
    result = score(tiny_llama, "Q", " A.")
    assert tiny_llama.versions == result.versions == result.to_dict()["versions"] == installed("cpu")
    assert ScoreResult.from_dict(result.to_dict()).versions == result.versions


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_device_is_named_as_torch_names_it():
    assert versions("cuda:0")["device"] == torch.cuda.get_device_name(0)
    assert versions("cuda")["device"] == torch.cuda.get_device_name()


@pytest.fixture(scope="module")
def outputs(tiny_llama_dir, tmp_path_factory):
    """Every kind of JSON document and report, written by the command line on the CPU."""
    folder = tmp_path_factory.mktemp("versions")
    m = ["-m", str(tiny_llama_dir), "--device", "cpu"]

    def run(name: str, args: list[str], *files: str) -> None:
        paths = {f: folder / f"{name}.{f}" for f in files}
        flags = {"lines": "-o", "summary": "--summary-json", "json": "-o", "html": "--html", "md": "--markdown"}
        assert main([*args, *m, *(x for f, p in paths.items() for x in (flags[f], str(p)))]) == 0, name

    chat = str(SAMPLES / "chat.jsonl")
    run("run", ["run", "-p", "Q: 1+2?", "-a", " 3"], "json", "html", "md")
    run("batch", ["batch", chat], "lines", "summary", "html", "md")
    run("diff", ["diff", "-p", "Q: 1+2?", "-a", " 3", "--dtype-b", "bfloat16"], "json", "html", "md")
    run("diff-input", ["diff", "--input", chat, "--dtype-b", "bfloat16"], "lines", "summary", "html", "md")
    run("choices", ["choices", str(SAMPLES / "choices.jsonl")], "lines", "summary", "html", "md")
    run("prefs", ["prefs", str(SAMPLES / "prefs" / "planted.jsonl")], "lines", "summary", "html", "md")
    audit = ["audit", str(SAMPLES / "audit" / "loss-outlier.jsonl"), "--fail-on", "none"]
    run("audit", audit, "lines", "html", "md")
    (folder / "audit.json").write_text(_stdout([*audit, *m, "--json"]))
    no_model = ["audit", chat, "--no-model", "--fail-on", "none", "-m", str(tiny_llama_dir)]
    assert main([*no_model, "-o", str(folder / "no-model.lines")]) == 0
    (folder / "no-model.json").write_text(_stdout([*no_model, "--json"]))
    return folder


def _stdout(args: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue()


DOCUMENTS = [
    # (file, device): one document per run
    ("run.json", "cpu"),
    ("batch.summary", "cpu"),
    ("diff.json", "cpu"),
    ("diff-input.summary", "cpu"),
    ("choices.summary", "cpu"),
    ("prefs.summary", "cpu"),
    ("audit.json", "cpu"),
    ("no-model.json", "none"),
]
LINES = ["batch", "diff-input", "choices", "prefs", "audit"]


@pytest.mark.parametrize(("name", "device"), DOCUMENTS)
def test_every_document_says_what_produced_it(outputs, name, device):
    doc = json.loads((outputs / name).read_text())
    assert doc["versions"] == installed(device)


@pytest.mark.parametrize("name", [*LINES, "no-model"])
def test_every_line_says_what_produced_it(outputs, name):
    lines = [json.loads(line) for line in (outputs / f"{name}.lines").read_text().splitlines()]
    assert lines
    for line in lines:
        assert line["versions"] == installed("none" if name == "no-model" else "cpu")
        assert "versions" not in line.get("settings", {})  # not compared by --resume (a fresh torch may resume)


@pytest.mark.parametrize("name", ["run", "batch", "diff", "diff-input", "choices", "prefs", "audit"])
def test_every_report_shows_the_versions(outputs, name):
    want = installed("cpu")
    html = (outputs / f"{name}.html").read_text()
    for key, value in want.items():
        assert f'<span data-f="versions.{key}">{value}</span>' in html, key
    md = (outputs / f"{name}.md").read_text()
    line = f"ce-inspect {want['ce_inspect']} · torch {want['torch']} · transformers {want['transformers']} · "
    line += f"Python {want['python']} · device {want['device']}"
    assert f"\n{line}\n" in md
