"""The GGUF -> safetensors cache: reused when complete, detected and rebuilt when partial or damaged.

Converting a real GGUF takes ~15 s, so these tests replace the converter with one that writes the tiny
Llama model: the cache logic around it (atomic build, manifest, validation, rebuild) is what is tested.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ce_inspect import load
from ce_inspect.errors import ModelLoadError
from ce_inspect.model import MANIFEST, cache_is_valid, fingerprint, gguf_cache_folder
from ce_inspect.model import gguf as gguf_cache


@dataclass
class FakeGguf:
    path: Path
    conversions: list[Path] = field(default_factory=list)


@pytest.fixture
def fake_gguf(tmp_path, tiny_llama_dir, monkeypatch):
    """A .gguf file whose "conversion" copies the tiny Llama model; ``conversions`` counts builds."""
    fake = FakeGguf(tmp_path / "tiny.gguf")
    fake.path.write_bytes(b"GGUF not really")

    def convert(source: Path, out: Path) -> None:
        assert source == fake.path.resolve()
        fake.conversions.append(out)
        for item in Path(tiny_llama_dir).iterdir():
            shutil.copy(item, out / item.name)

    monkeypatch.setattr(gguf_cache, "_convert_gguf", convert)
    monkeypatch.setenv("CE_INSPECT_CACHE", str(tmp_path / "cache"))
    return fake


@pytest.fixture
def warnings_seen():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("ce_inspect")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_built_once_then_reused(fake_gguf):
    folder = Path(gguf_cache_folder(fake_gguf.path))
    assert cache_is_valid(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"] and "config.json" in manifest["files"]
    assert Path(gguf_cache_folder(fake_gguf.path)) == folder
    assert len(fake_gguf.conversions) == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def damage_truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def damage_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink()


def damage_header(folder: Path) -> None:
    """Same size, but the header no longer parses (a partial overwrite)."""
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(8)
        fh.write(b"\0" * 16)


def damage_length(folder: Path) -> None:
    """Same size, header length field pointing past the end of the file."""
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.write((10**12).to_bytes(8, "little"))


def damage_config(folder: Path) -> None:
    config = folder / "config.json"
    config.write_text("{" + " " * (len(config.read_text()) - 1))


def damage_missing_file(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_manifest, damage_header, damage_length, damage_config, damage_missing_file],
)
def test_damaged_cache_is_detected_and_rebuilt(fake_gguf, damage, warnings_seen):
    folder = Path(gguf_cache_folder(fake_gguf.path))
    damage(folder)
    assert not cache_is_valid(folder)
    assert Path(gguf_cache_folder(fake_gguf.path)) == folder
    assert len(fake_gguf.conversions) == 2
    assert cache_is_valid(folder)
    assert any("rebuilding" in message for message in warnings_seen)


def test_unrelated_folder_is_not_a_cache(tmp_path, tiny_llama_dir):
    assert not cache_is_valid(tmp_path / "missing")
    assert not cache_is_valid(Path(tiny_llama_dir))  # a model folder without a manifest


def test_load_uses_the_cache(fake_gguf):
    lm = load(str(fake_gguf.path), device="cpu", quiet=True)
    assert lm.source == "gguf" and Path(lm.path).parent.name == "gguf"
    load(str(fake_gguf.path), device="cpu", quiet=True)
    assert len(fake_gguf.conversions) == 1


def test_cache_that_passes_the_check_but_does_not_load_is_rebuilt(fake_gguf, tiny_llama, warnings_seen):
    """Damage the check cannot see (a tensor renamed, size, mtime and inode kept): load rebuilds once.

    The check trusts a file whose size, mtime_ns and inode match the manifest without reading it (that is
    what keeps it cheap); an edit that restores the mtime is not seen there, but a weight the model then
    lacks is refused at load time and the cache rebuilt.
    """
    folder = Path(gguf_cache_folder(fake_gguf.path))
    weights = folder / "model.safetensors"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    at = data.index(b'"model.embed_tokens.weight"')
    data[at + 1 : at + 6] = b"XXXXX"  # renames a tensor: same size, valid header
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_ino == before.st_ino
    assert cache_is_valid(folder)
    lm = load(str(fake_gguf.path), device="cpu", quiet=True)
    assert len(fake_gguf.conversions) == 2
    assert any("does not load" in message for message in warnings_seen)
    # The real weights, not the random ones transformers would have put in place of the missing tensor.
    assert bool((lm.model.model.embed_tokens.weight == tiny_llama.model.model.embed_tokens.weight).all())


# --- issue 8 item 4: damage that keeps every size is detected by content -----------------------------


def zero_tensor_bytes(weights: Path) -> None:
    """Every tensor's bytes set to zero in place: header, size and inode intact (the issue's damage)."""
    with open(weights, "r+b") as fh:
        header = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + header)
        fh.write(b"\0" * (weights.stat().st_size - 8 - header))


def test_zeroed_tensor_bytes_are_detected_and_rebuilt(fake_gguf, tiny_llama_dir, warnings_seen):
    """Before: every loss became ln(vocab), exit 0. Now the hash differs, the cache is rebuilt, figures right."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from ce_inspect import Layout, encode, score

    folder = Path(gguf_cache_folder(fake_gguf.path))
    size, inode = (folder / "model.safetensors").stat().st_size, (folder / "model.safetensors").stat().st_ino
    zero_tensor_bytes(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size == size
    assert (folder / "model.safetensors").stat().st_ino == inode
    assert not cache_is_valid(folder)

    lm = load(str(fake_gguf.path), device="cpu", quiet=True)
    assert len(fake_gguf.conversions) == 2
    assert any("rebuilding" in message for message in warnings_seen)
    result = score(lm, "the cat sat", " on the mat")
    enc = encode(lm.tokenizer, "the cat sat", " on the mat", Layout())
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        own = reference(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels])).loss.item()
    assert result.summary.mean == pytest.approx(own, abs=1e-5)
    assert abs(result.summary.mean - math.log(len(lm.tokenizer))) > 0.1  # not the uniform distribution


@pytest.fixture
def hashes(monkeypatch):
    """The names of the files the cache check reads in full."""
    seen: list[str] = []
    real = gguf_cache.sha256_file
    monkeypatch.setattr(gguf_cache, "sha256_file", lambda path: seen.append(path.name) or real(path))
    return seen


def test_normal_path_reads_no_file_in_full(fake_gguf, hashes):
    folder = Path(gguf_cache_folder(fake_gguf.path))
    hashes.clear()
    assert cache_is_valid(folder)
    assert hashes == []


def touch(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def copy_in_place(path: Path) -> None:
    """The same bytes under a new inode (as a copy of the cache, or an editor's save, leaves them)."""
    copy = path.with_name(path.name + ".copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)


@pytest.mark.parametrize("change", [touch, copy_in_place])
def test_same_content_is_rehashed_once_and_kept(fake_gguf, hashes, change):
    """A touched or copied file is read once; the same hash keeps the cache and refreshes the manifest."""
    folder = Path(gguf_cache_folder(fake_gguf.path))
    change(folder / "model.safetensors")
    hashes.clear()
    assert cache_is_valid(folder)
    assert hashes == ["model.safetensors"]
    entry = json.loads((folder / MANIFEST).read_text())["files"]["model.safetensors"]
    stat = (folder / "model.safetensors").stat()
    assert (entry["mtime_ns"], entry["inode"]) == (stat.st_mtime_ns, stat.st_ino)
    hashes.clear()
    assert cache_is_valid(folder) and hashes == []  # fast again
    assert len(fake_gguf.conversions) == 1


def test_manifest_records_content_hashes(fake_gguf):
    import hashlib

    folder = Path(gguf_cache_folder(fake_gguf.path))
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {p.name for p in folder.iterdir() if p.name != MANIFEST}
    for name, entry in files.items():
        stat = (folder / name).stat()
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert (entry["size"], entry["mtime_ns"], entry["inode"]) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def test_cache_of_an_older_format_is_rebuilt(fake_gguf):
    folder = Path(gguf_cache_folder(fake_gguf.path))
    manifest = json.loads((folder / MANIFEST).read_text())
    old = {"format": 1, "source": manifest["source"], "files": {n: e["size"] for n, e in manifest["files"].items()}}
    (folder / MANIFEST).write_text(json.dumps(old))
    assert not cache_is_valid(folder)
    gguf_cache_folder(fake_gguf.path)
    assert len(fake_gguf.conversions) == 2 and cache_is_valid(folder)


def test_read_only_cache_stays_usable_after_a_touch(fake_gguf, hashes, monkeypatch):
    """A manifest that cannot be refreshed only means the next run hashes again."""
    folder = Path(gguf_cache_folder(fake_gguf.path))
    touch(folder / "config.json")
    monkeypatch.setattr(gguf_cache.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "no")))
    hashes.clear()
    assert cache_is_valid(folder) and cache_is_valid(folder)
    assert hashes == ["config.json", "config.json"]


def test_cache_missing_weights_is_rebuilt_then_refused(fake_gguf, monkeypatch, tiny_llama_dir):
    """A converter that writes an incomplete model: the rebuild cannot help, and the error says why."""
    from safetensors.torch import load_file, save_file

    def convert(source: Path, out: Path) -> None:
        fake_gguf.conversions.append(out)
        for item in Path(tiny_llama_dir).iterdir():
            shutil.copy(item, out / item.name)
        weights = load_file(out / "model.safetensors")
        del weights["model.norm.weight"]
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(gguf_cache, "_convert_gguf", convert)
    with pytest.raises(ModelLoadError, match=r"lacks 1 weight \(model\.norm\.weight\)"):
        load(str(fake_gguf.path), device="cpu", quiet=True)
    assert len(fake_gguf.conversions) == 2


def test_cache_fingerprint_comes_from_the_manifest(fake_gguf, tiny_llama_dir):
    """Content hashes recorded at build time: the same across loads and across a rebuild of the same bytes."""
    lm = load(str(fake_gguf.path), device="cpu", quiet=True)
    assert lm.fingerprint is not None
    assert load(str(fake_gguf.path), device="cpu", quiet=True).fingerprint == lm.fingerprint
    zero_tensor_bytes(Path(lm.path) / "model.safetensors")
    rebuilt = load(str(fake_gguf.path), device="cpu", quiet=True)
    assert len(fake_gguf.conversions) == 2 and rebuilt.fingerprint == lm.fingerprint
    # The cache holds the tiny model's files byte for byte, all under the hashing limit: same digest.
    assert lm.fingerprint == fingerprint.model_fingerprint(tiny_llama_dir)
    manifest_path = Path(lm.path) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["config.json"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert fingerprint.model_fingerprint(lm.path, "gguf") != lm.fingerprint  # read from the manifest
