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

from ce_inspect import load, loading
from ce_inspect.loading import MANIFEST, cache_is_valid, gguf_cache_folder


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

    monkeypatch.setattr(loading, "_convert_gguf", convert)
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
