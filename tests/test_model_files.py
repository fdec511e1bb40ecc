"""A weight file rewritten while ce-inspect runs stops the run: transformers memory-maps safetensors weights
(float32 on CPU), so an in-place rewrite would change the running model's figures mid-run, with exit 0, and
a truncating copy would kill it with SIGBUS; the loaded model copies its CPU weights out of the map, and the
folder that no longer holds the scored model is named."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_model

from ce_inspect import load, score
from ce_inspect.cli import main
from ce_inspect.errors import ModelChangedError
from ce_inspect.model import check_model_unchanged, files_read_while_running, stamp_model_files

WEIGHTS = "model.safetensors"


def _rewrite_in_place(path: Path, scale: float = 1.001) -> None:
    """What ``cp new.safetensors model.safetensors`` does: the same file (inode) with other weights, same size."""
    from safetensors.torch import load_file, save

    inode, size = path.stat().st_ino, path.stat().st_size
    blob = save({k: v * scale for k, v in load_file(str(path)).items()}, metadata={"format": "pt"})
    with open(path, "r+b") as fh:
        fh.write(blob)
        fh.truncate()
    assert (path.stat().st_ino, path.stat().st_size) == (inode, size)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return build_model(tmp_path / "m", "llama")


@pytest.fixture
def lm(model_dir):
    return load(str(model_dir), device="cpu", quiet=True)


# --- the stamp and the check ------------------------------------------------------------------------------


def test_stamp_holds_the_weight_files_only(lm, model_dir):
    assert [Path(f.path) for f in lm.files] == [model_dir.resolve() / WEIGHTS]
    assert lm.files[0].size == (model_dir / WEIGHTS).stat().st_size
    check_model_unchanged(lm)
    # Files read once at load, or written there by the user (an output next to the model), change no figure.
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text() + "\n")
    (model_dir / "scores.json").write_text("{}")
    check_model_unchanged(lm)


def test_in_place_rewrite_is_caught_and_no_longer_reaches_the_running_model(lm, model_dir):
    weight = lm.model.model.layers[1].mlp.up_proj.weight
    before = weight.clone()
    _rewrite_in_place(model_dir / WEIGHTS)
    # The hazard that was: the loaded weights were the file's memory-mapped bytes, now other ones (and a
    # truncating copy killed the process with SIGBUS). The model holds its own copy since issue 22.
    assert torch.equal(before, weight)
    with pytest.raises(ModelChangedError) as caught:
        check_model_unchanged(lm)
    message = str(caught.value)
    path = model_dir.resolve() / WEIGHTS
    assert f"the model's file {path} changed while ce-inspect was using it (modified" in message
    assert "size" not in message  # same size: only the time says it
    assert "these figures cannot be trusted: run again once the files stop changing" in message
    with pytest.raises(ModelChangedError, match="changed while ce-inspect was using it"):
        score(lm, "the cat", " sat")


def test_size_change_is_shown(lm, model_dir):
    size = (model_dir / WEIGHTS).stat().st_size
    with open(model_dir / WEIGHTS, "ab") as fh:
        fh.write(b"\0" * 6)
    with pytest.raises(ModelChangedError, match=rf"\(size {size} -> {size + 6} bytes, modified "):
        check_model_unchanged(lm)


def test_rewrite_that_restores_size_and_mtime_is_still_caught(lm, model_dir):
    path = model_dir / WEIGHTS
    stat = path.stat()
    _rewrite_in_place(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what `cp -p` or `touch -r` leave
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(ModelChangedError, match="with its modification time kept"):
        check_model_unchanged(lm)


def test_replaced_or_removed_file_is_caught(lm, model_dir, tmp_path):
    path = model_dir / WEIGHTS
    other = tmp_path / "other.safetensors"
    other.write_bytes(path.read_bytes())
    os.replace(other, path)  # what save_pretrained and atomic writers do: a new file under the old name
    with pytest.raises(ModelChangedError, match="was replaced by another file .* no longer the model in"):
        check_model_unchanged(lm)
    path.unlink()
    with pytest.raises(ModelChangedError, match=f"the model's file {path.resolve()} was removed while"):
        check_model_unchanged(lm)


def test_change_while_loading_fails_the_load(model_dir, monkeypatch):
    from ce_inspect.model import loader

    original = loader._load_model

    def load_and_rewrite(*args, **kwargs):
        model = original(*args, **kwargs)
        _rewrite_in_place(model_dir / WEIGHTS)
        return model

    monkeypatch.setattr(loader, "_load_model", load_and_rewrite)
    with pytest.raises(ModelChangedError, match="changed while ce-inspect was using it"):
        load(str(model_dir), device="cpu", quiet=True)


def test_only_weights_left_on_cpu_or_meta_are_watched(model_dir):
    """Weights copied to an accelerator at load no longer read the file: nothing to watch (and no cost)."""
    files = stamp_model_files(model_dir)

    def model_on(*devices):
        tensors = [SimpleNamespace(device=torch.device(d)) for d in devices]
        return SimpleNamespace(parameters=lambda: iter(tensors), buffers=lambda: iter(()))

    assert files_read_while_running(model_on("cuda:0", "cuda:1"), files) == ()
    assert files_read_while_running(model_on("cuda:0", "cpu"), files) == files  # device_map with CPU offload
    assert files_read_while_running(model_on("cuda:0", "meta"), files) == files  # disk offload
    assert files and [Path(f.path).name for f in files] == [WEIGHTS]


@pytest.mark.default_model
def test_default_model_watches_its_cache_safetensors(smollm2):
    from ce_inspect.model import MANIFEST

    names = [Path(f.path).name for f in smollm2.files]
    assert names == [WEIGHTS]  # not the manifest (another run may refresh it), not the .gguf (converted)
    assert Path(smollm2.files[0].path).parent == Path(smollm2.path).resolve()
    assert (Path(smollm2.path) / MANIFEST).is_file()
    check_model_unchanged(smollm2)


# --- the commands stop, keeping only lines computed from the loaded weights ------------------------------


def _records(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"q{i} the", "answer": f" a{i}"}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("when", ["during the second pass", "after the second pass"])
def test_batch_stops_at_the_first_batch_after_the_change(when, model_dir, tmp_path, capsys, monkeypatch):
    """Batches of 2 in input order (sort window 2): the first batch's 2 lines are kept, and they are the
    lines of a run on unchanged files; nothing computed after the rewrite is written."""
    import ce_inspect.dataset.batching as batch
    import ce_inspect.scoring.hf as scoring

    data = _records(tmp_path / "data.jsonl", 6)
    args = ["batch", str(data), "-m", str(model_dir), "--device", "cpu", "-b", "2", "--sort-window", "2"]
    assert main([*args, "-o", str(tmp_path / "clean.jsonl")]) == 0
    clean = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert len(clean) == 6
    capsys.readouterr()

    # During: the rewrite lands before the second forward pass (caught by the scoring's own check).
    # After: it lands once the pass is done (caught by the runner's check before writing its lines).
    module, name = (scoring, "_figures") if when.startswith("during") else (batch, "score_examples")
    original, calls = getattr(module, name), []

    def rewrite_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2 and module is scoring:
            _rewrite_in_place(model_dir / WEIGHTS)
        result = original(*a, **k)
        if len(calls) == 2 and module is batch:
            _rewrite_in_place(model_dir / WEIGHTS)
        return result

    monkeypatch.setattr(module, name, rewrite_on_second)
    out = tmp_path / "out.jsonl"
    code = main([*args, "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: the model's file {model_dir.resolve() / WEIGHTS} changed while ce-inspect was using it")
    )
    assert len(calls) == 2
    assert out.read_text().splitlines() == clean[:2]


def test_run_fails_when_the_weights_change_after_loading(model_dir, tmp_path, capsys, monkeypatch):
    import ce_inspect.cli.options  # the command line's one call of `load`

    original = ce_inspect.cli.options.load

    def load_then_rewrite(*args, **kwargs):
        lm = original(*args, **kwargs)
        _rewrite_in_place(model_dir / WEIGHTS)
        return lm

    monkeypatch.setattr(ce_inspect.cli.options, "load", load_then_rewrite)
    out = tmp_path / "out.json"
    args = ["run", "-p", "the cat", "-a", " sat", "-m", str(model_dir), "--device", "cpu", "--json", "-o", str(out)]
    code = main(args)
    stdout, stderr = capsys.readouterr()
    assert code == 1 and stdout == "" and not out.exists()
    assert stderr.count("\n") == 1 and f"{WEIGHTS} changed while ce-inspect was using it" in stderr


def test_diff_checks_both_models_even_the_released_reference(tmp_path):
    from ce_inspect import diff

    a = build_model(tmp_path / "a", "llama", seed=1)
    b = build_model(tmp_path / "b", "llama", seed=2)
    lm_b = load(str(b), device="cpu", quiet=True)
    _rewrite_in_place(b / WEIGHTS)
    with pytest.raises(ModelChangedError, match=f"file {b.resolve() / WEIGHTS} changed"):
        diff(load(str(a), device="cpu", quiet=True), lm_b, "the cat", " sat")

    # Sequential: the reference's model is released after its pass, yet its head still reads the file.
    def candidate():
        _rewrite_in_place(a / WEIGHTS)
        return load(str(b), device="cpu", quiet=True)

    with pytest.raises(ModelChangedError, match=f"file {a.resolve() / WEIGHTS} changed"):
        diff(lambda: load(str(a), device="cpu", quiet=True), candidate, "the cat", " sat")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_the_gpu_was_copied_and_is_not_watched(model_dir):
    lm = load(str(model_dir), device="cuda", dtype="float32")
    before = score(lm, "the cat", " sat")
    assert lm.files == ()
    _rewrite_in_place(model_dir / WEIGHTS)
    after = score(lm, "the cat", " sat")  # no error, and the figures are still the loaded weights'
    assert [t.loss for t in after.tokens] == [t.loss for t in before.tokens]
