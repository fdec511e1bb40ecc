"""Hub datasets (issue 20): read from the local cache, else downloaded when the Hub is reachable, with the rule
models follow (one connection attempt; offline or unreachable: one line that says why). No test uses the
network: the connection and the download are stand-ins, the cache is a real `datasets` cache built here."""

from __future__ import annotations

import glob
import json
import os
import socket

import pytest

from ce_inspect import online
from ce_inspect.data import open_data, read_records
from ce_inspect.errors import InputError

datasets = pytest.importorskip("datasets", reason="Hub datasets need the datasets extra")

ROWS = [{"prompt": "Q?", "answer": " A"}, {"prompt": "R?", "answer": " B"}]


@pytest.fixture
def datasets_cache(monkeypatch, tmp_path):
    """An empty `datasets` cache, and no connection attempt remembered from another test."""
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(online, "_REACHABLE", {})
    return tmp_path / "datasets"


@pytest.fixture
def connections(monkeypatch):
    """Connection attempts to the Hub, recorded; each fails (no network) unless the test says otherwise."""
    tried: list[tuple[str, int]] = []
    answer = {"reachable": False}

    class Connection:
        def close(self) -> None:
            pass

    def create_connection(address, timeout=None):
        tried.append(address)
        if not answer["reachable"]:
            raise OSError("network is unreachable")
        return Connection()

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return tried, answer


@pytest.fixture
def loads(monkeypatch):
    """`datasets.load_dataset` as a stand-in: what `HF_HUB_OFFLINE` each call ran under; the cache holds
    nothing, the Hub (when asked) gives ROWS."""
    from datasets import config

    calls: list[bool] = []

    def load_dataset(name, split=None):
        calls.append(config.HF_HUB_OFFLINE)
        if config.HF_HUB_OFFLINE:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_offline_and_not_cached_is_one_line_and_no_connection(monkeypatch, datasets_cache, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        list(read_records("nobody/no-such-dataset"))
    message = str(err.value)
    assert message.startswith("nobody/no-such-dataset: no such file, and not a Hub dataset in the local cache; ")
    assert "offline mode is on (HF_HUB_OFFLINE), so it cannot be downloaded" in message and "\n" not in message
    assert connections[0] == []


def test_unreachable_hub_is_tried_once_and_never_downloaded_from(monkeypatch, datasets_cache, connections, loads):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for _ in range(2):
        with pytest.raises(InputError, match="the Hub cannot be reached from here, so it cannot be downloaded"):
            list(read_records("nobody/no-such-dataset"))
    assert len(connections[0]) == 1  # one attempt for the whole process, as for models
    assert loads == [True, True]  # the cache only, each time


def test_reachable_hub_downloads_what_the_cache_lacks(monkeypatch, datasets_cache, connections, loads):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    connections[1]["reachable"] = True
    records = list(read_records("tiny/pairs"))
    assert [(r.prompt, r.answer) for r in records] == [("Q?", " A"), ("R?", " B")]
    assert loads == [True, False]  # the cache first, then the Hub
    assert len(connections[0]) == 1


def test_the_hub_refusing_a_dataset_is_one_line(monkeypatch, datasets_cache, connections):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    connections[1]["reachable"] = True

    def load_dataset(name, split=None):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(InputError, match="nor one the Hub gives \\(no such dataset, or it is private or gated\\)"):
        list(read_records("nobody/private"))


def cache_hub_dataset(cache, repo_id: str, rows, tmp_path) -> None:
    """What `datasets` leaves in its cache after loading ``repo_id`` from the Hub once (JSON data files):
    ``<cache>/<org>___<name>/default/0.0.0/<hash>/`` with the Arrow table and its dataset_info.json."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    builder = Json(cache_dir=str(cache), dataset_name=name, data_files={"train": str(source)}, hash="0123456789abcdef")
    builder.download_and_prepare()
    [config_dir] = glob.glob(str(cache / name / "default-*"))
    os.rename(config_dir, cache / name / "default")
    os.rename(cache / name, cache / f"{org}___{name}")


def test_a_cached_hub_dataset_is_read_without_the_network(monkeypatch, datasets_cache, connections, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_hub_dataset(datasets_cache, "tiny/pairs", ROWS, tmp_path)
    info = open_data("tiny/pairs", split="train")
    assert info.kind == "hub" and info.format == "prompt-answer" and "a Hub dataset, split train" in info.describe()
    records = list(read_records("tiny/pairs", split="train"))
    assert [(r.prompt, r.answer) for r in records] == [("Q?", " A"), ("R?", " B")]
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online: the cache still comes first, no connection is made
    assert len(list(read_records("tiny/pairs", split="train"))) == 2
    assert connections[0] == []
