"""Data-parallel `batch` under torchrun: the plan, the part files, the merge, and 2-rank gloo runs on CPU
whose merged output and summary equal a single-process run's, after a killed rank and a resume too."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ce_inspect.dataset import Entry, merge_outputs, read_resume, read_sharded_resume, shard_lines
from ce_inspect.distributed import (
    check_parts,
    detect_launch,
    existing_parts,
    part_path,
    rank_device,
    rank_gpus,
)
from ce_inspect.errors import InputError, ResumeError
from tests.conftest import PROCESS_TIMEOUT
from tests.conftest import json_close as _close

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "samples" / "pairs.jsonl"
ENV = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


# --- the launch --------------------------------------------------------------------------------------------


def test_launch_is_read_from_the_standard_variables():
    assert detect_launch({}) is None
    assert detect_launch({**ENV, "WORLD_SIZE": "1"}) is None
    launch = detect_launch({**ENV, "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert launch is not None
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (1, 2, 1, 2)
    assert (launch.master_addr, launch.master_port, launch.agent_store) == ("127.0.0.1", 29500, True)
    assert detect_launch(ENV).agent_store is False  # rank 0 hosts the store (accelerate, manual launches)
    with pytest.raises(InputError, match="MASTER_ADDR is not set"):
        detect_launch({k: v for k, v in ENV.items() if k != "MASTER_ADDR"})


def test_ranks_started_by_mpi_alone_are_refused(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    # accelerate launch --cpu --mpirun_hostfile starts its ranks with mpirun: MPI's variables, not torchrun's.
    # Taken for single processes, each would score the whole data set into the same output.
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        with pytest.raises(InputError, match=rf"{name}=2: this process is one of 2 started by MPI"):
            detect_launch({name: "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert detect_launch({"PMI_SIZE": "1"}) is None  # one MPI process (srun -n 1) is a single process
    assert detect_launch({**ENV, "OMPI_COMM_WORLD_SIZE": "2"}).world_size == 2  # torchrun under MPI: its own
    from ce_inspect.cli import main

    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(PAIRS), "-m", str(tiny_llama_dir), "-o", str(out), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.count("Error:") == 1 and "accelerate launch --multi_gpu" in captured.err


def test_each_rank_takes_its_own_gpu_or_block_of_gpus():
    launch = detect_launch({**ENV, "LOCAL_WORLD_SIZE": "2"})
    assert rank_device("cuda", launch) == "cuda:1"
    assert rank_device("cuda:0", launch) == "cuda:0"  # an explicit index is the user's choice
    assert rank_device("cpu", launch) == "cpu"
    assert rank_device("cuda", None) == "cuda"
    assert rank_gpus(8, launch) == [4, 5, 6, 7]
    assert rank_gpus(8, None) is None
    with pytest.raises(InputError, match="at least one GPU per rank"):
        rank_gpus(1, launch)


# --- the plan ---------------------------------------------------------------------------------------------


def _entries(lengths: list[int]) -> list[Entry]:
    return [Entry(line=i + 1, id=None, length=n, scored=1) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shares_are_contiguous_cover_every_line_once_and_balance_tokens(world):
    lengths = [(i * 37) % 101 + 1 for i in range(50)]
    shares = shard_lines(_entries(lengths), world)
    assert len(shares) == world
    assert [line for share in shares for line in share] == list(range(1, 51))  # contiguous, in order
    total = sum(lengths)
    for share in shares:
        tokens = sum(lengths[line - 1] for line in share)
        assert abs(tokens - total / world) <= max(lengths)  # off by at most one example
    assert shard_lines(_entries(lengths), world) == shares  # every rank computes the same plan


def test_more_ranks_than_examples_leaves_some_ranks_idle():
    shares = shard_lines(_entries([5, 5]), 4)
    assert sorted(line for share in shares for line in share) == [1, 2]
    assert sum(1 for share in shares if not share) == 2


# --- part files and the merge -----------------------------------------------------------------------------


def test_part_files_are_found_by_their_exact_names(tmp_path):
    out = tmp_path / "out.jsonl"
    assert part_path(out, 1, 2) == tmp_path / ".out.jsonl.rank1-of-2.part"
    for name in (".out.jsonl.rank0-of-2.part", ".out.jsonl.rank1-of-2.part", ".out.jsonl2.rank0-of-2.part", "x"):
        (tmp_path / name).write_text("")
    assert existing_parts(out) == {(0, 2): part_path(out, 0, 2), (1, 2): part_path(out, 1, 2)}


def test_part_files_need_resume_or_force_and_the_same_number_of_ranks(tmp_path):
    out = tmp_path / "out.jsonl"
    check_parts(out, 2, resume=False, force=False)  # none: nothing to say
    part_path(out, 0, 2).write_text("")
    with pytest.raises(InputError, match="unfinished torchrun run.*`resume`.*`force`"):
        check_parts(out, 2, resume=False, force=False)
    check_parts(out, 2, resume=False, force=True)
    check_parts(out, 2, resume=True, force=False)
    with pytest.raises(ResumeError, match="with 2 ranks.*this is 3 ranks"):
        check_parts(out, 3, resume=True, force=False)
    with pytest.raises(ResumeError, match="this is a single process"):
        check_parts(out, None, resume=True, force=False)


def _line(n: int, text: str = "x") -> bytes:
    return (json.dumps({"schema_version": 1, "line": n, "text": text}) + "\n").encode()


def test_merge_interleaves_sources_in_input_order_and_drops_torn_tails(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(_line(1) + _line(4) + b'{"schema_ver')  # torn last line: dropped
    b.write_bytes(_line(2) + _line(3) + _line(9))
    c.write_bytes(_line(5) + _line(7, "beyond the size given"))
    out = tmp_path / "out.jsonl"
    assert merge_outputs(out, [(a, None), (b, None), (c, len(_line(5)))]) == 6
    assert [json.loads(x)["line"] for x in out.read_bytes().splitlines()] == [1, 2, 3, 4, 5, 9]


def test_a_failed_merge_leaves_the_output_as_it_was(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"before\n")
    bad = tmp_path / "bad"
    bad.write_bytes(_line(1) + b"not json\n")
    with pytest.raises(json.JSONDecodeError):
        merge_outputs(out, [(bad, None)])
    assert out.read_bytes() == b"before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out.jsonl"]  # no temporary file left


# --- 2-rank gloo runs on CPU -------------------------------------------------------------------------------

OPTIONS = ["-b", "2", "--sort-window", "3", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _single(model: Path, out: Path, summary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ce_inspect", "batch", str(PAIRS), "-m", str(model), "-o", str(out)]
    cmd += ["--summary-json", str(summary), "--skip-invalid", *OPTIONS, *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)


def _torchrun(
    model: Path, out: Path, *args: str, data: Path = PAIRS, skip: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """`batch` over 2 ranks (with --skip-invalid unless ``skip`` is False; the tiny model's context is 256)."""
    args = ("--skip-invalid", *args) if skip else args
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += ["-m", "ce_inspect", "batch", str(data), "-m", str(model), "-o", str(out), *OPTIONS, *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)


def _same_as_single(reference: tuple[Path, Path], out: Path, summary: Path, *ignore: str) -> None:
    ref_out, ref_summary = reference
    ref_lines, lines = ref_out.read_text().splitlines(), out.read_text().splitlines()
    assert len(lines) == len(ref_lines) == 15  # 16 records, one too long for the tiny model's context
    for k, (x, y) in enumerate(zip(ref_lines, lines), 1):
        a, b = json.loads(x), json.loads(y)
        for key in ignore:
            a.pop(key), b.pop(key)
        _close(a, b, f"line {k}")
    ref, got = json.loads(ref_summary.read_text()), json.loads(summary.read_text())
    for key in ("batching", "output", "resumed", *ignore):
        ref.pop(key), got.pop(key)
    _close(ref, got, "summary")
    # And the summary is what the merged lines add up to: CrossEntropyLoss(mean) over the data set.
    docs = [json.loads(x) for x in lines]
    count = sum(d["summary"]["count"] for d in docs)
    assert got["scored_tokens"] == count
    assert math.isclose(got["token_weighted_mean_loss"], math.fsum(d["summary"]["sum"] for d in docs) / count)
    assert [s["line"] for s in got["skipped"]] == [15]


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    out, summary = folder / "out.jsonl", folder / "summary.json"
    proc = _single(tiny_llama_dir, out, summary)
    assert proc.returncode == 0, proc.stderr
    return out, summary


def _no_parts(out: Path) -> bool:
    return not existing_parts(out)


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(tiny_llama_dir, reference, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    proc = _torchrun(tiny_llama_dir, out, "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    _same_as_single(reference, out, summary)
    assert _no_parts(out)
    batching = json.loads(summary.read_text())["batching"]
    assert (batching["examples"], batching["sequence_tokens"]) == (
        json.loads(reference[1].read_text())["batching"]["examples"],
        json.loads(reference[1].read_text())["batching"]["sequence_tokens"],
    )
    assert "Error" not in proc.stderr
    assert proc.stdout.startswith("data set ") and proc.stdout.count("Highest-loss tokens") == 1  # rank 0's only


@pytest.mark.slow
def test_a_killed_rank_leaves_no_output_and_resume_finishes_the_same(tiny_llama_dir, reference, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    # One example per window: rank 1's first line is on disk before its second batch, where the hook kills it.
    killed = _torchrun(tiny_llama_dir, out, "--sort-window", "1", CE_INSPECT_TEST_RANK_FAULT="1:kill")
    assert killed.returncode != 0
    assert not out.exists()
    parts = existing_parts(out)
    assert (1, 2) in parts and set(parts) <= {(0, 2), (1, 2)}  # rank 0 may be stopped before it opens its part
    kept = sum(len(read_resume(p).examples) for p in parts.values())
    assert len(read_resume(parts[(1, 2)]).examples) >= 1  # its first batch was written before the kill

    again = _torchrun(tiny_llama_dir, out, "--summary-json", str(summary))
    assert again.returncode != 0 and "pass --resume to continue that run or --force" in again.stderr
    resumed = _torchrun(tiny_llama_dir, out, "--resume", "--summary-json", str(summary))
    assert resumed.returncode == 0, resumed.stderr
    _same_as_single(reference, out, summary)
    assert json.loads(summary.read_text())["resumed"] == kept
    assert _no_parts(out)


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_with_its_error_on_rank_0(tiny_llama_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _torchrun(tiny_llama_dir, out, CE_INSPECT_TEST_RANK_FAULT="1:error")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: rank 1 of 2: injected failure on rank 1 (CE_INSPECT_TEST_RANK_FAULT)"]
    assert not out.exists()
    assert re.search(r"exitcode\s*:\s*1 ", proc.stderr)  # rank 0's status is the run's


@pytest.mark.slow
def test_bad_input_fails_the_run_with_the_line_number_and_no_output(tiny_llama_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [json.loads(x) for x in PAIRS.read_text().splitlines()]
    rows[9] = {"id": "broken", "prompt": "no answer field"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = _torchrun(tiny_llama_dir, out, data=data, skip=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "line 10 (id 'broken')" in errors[0], proc.stderr
    assert not out.exists() and _no_parts(out)


@pytest.mark.slow
def test_under_torchrun_output_is_required_and_run_is_refused(tiny_llama_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    proc = subprocess.run(
        [*cmd, "-m", "ce_inspect", "batch", str(PAIRS), "-m", str(tiny_llama_dir)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode != 0 and proc.stdout == ""
    assert "cannot share stdout; give --output" in proc.stderr
    assert re.search(r"exitcode\s*:\s*2 ", proc.stderr)
    cmd[-1] = str(_free_port())
    proc = subprocess.run(
        [*cmd, "-m", "ce_inspect", "run", "-p", "a", "-a", "b", "-m", str(tiny_llama_dir)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode != 0 and "`ce-inspect run` runs in one process" in proc.stderr


def test_a_single_process_does_not_resume_part_files(tiny_llama_dir, tmp_path, capsys):
    from ce_inspect.cli import main

    out = tmp_path / "out.jsonl"
    part_path(out, 0, 2).write_text("")
    code = main(["batch", str(PAIRS), "-m", str(tiny_llama_dir), "-o", str(out), "--resume", "--device", "cpu"])
    assert code == 1
    assert "torchrun run with 2 ranks" in capsys.readouterr().err
    assert not out.exists()


def test_sharded_resume_is_the_union_of_the_output_and_the_parts(tmp_path, tiny_llama_dir, capsys):
    from ce_inspect.cli import main

    # A real output to cut into pieces: lines 1-4 in the output, 5-6 in rank 0's part, 9 in rank 1's.
    full = tmp_path / "full.jsonl"
    data = tmp_path / "data.jsonl"
    data.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:10]))
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(full), "--device", "cpu"]) == 0
    lines = full.read_text().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_text("".join(lines[:4]))
    part_path(out, 0, 2).write_text("".join(lines[4:6]))
    part_path(out, 1, 2).write_text(lines[8])
    state = read_sharded_resume(out, 2, 10, resume=True)
    assert state.base_lines == {1, 2, 3, 4}
    assert sorted(state.union.examples) == [1, 2, 3, 4, 5, 6, 9] and state.union.ordered is False
    assert state.resumed == 7
    part_path(out, 1, 2).write_text(lines[5])  # line 6 in two files
    with pytest.raises(ResumeError, match="input line 6 has a result in two files"):
        read_sharded_resume(out, 2, 10, resume=True)
    part_path(out, 1, 2).write_text(lines[0])  # a part the output already holds: left from a merge
    assert sorted(read_sharded_resume(out, 2, 10, resume=True).parts) == [0]


@pytest.mark.slow
def test_accelerate_launch_on_cpus_writes_what_one_process_writes(tiny_llama_dir, reference, tmp_path):
    # docs/torchrun.md's command. accelerate's --multi_gpu starts the ranks through torchrun's launcher whether or
    # not there is a GPU (its --cpu starts one process, or mpirun ranks: see the MPI test above). HF_HOME
    # in tmp_path: no user's default_config.yaml steers the launch, and accelerate must write nothing there.
    out, summary, home = tmp_path / "out.jsonl", tmp_path / "summary.json", tmp_path / "hf"
    proc = _accelerate(tiny_llama_dir, out, home, "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    _same_as_single(reference, out, summary)
    assert _no_parts(out) and not home.exists()
    assert json.loads(summary.read_text())["batching"]["examples"] == 15  # both ranks' shares, merged
    assert "Error" not in proc.stderr
    assert proc.stdout.startswith("data set ") and proc.stdout.count("Highest-loss tokens") == 1  # rank 0's only
    # The same launch has a rank 1 that scores its own share: made to fail, rank 0 names it and keeps its part.
    failed = _accelerate(tiny_llama_dir, out, home, "--force", CE_INSPECT_TEST_RANK_FAULT="1:error")
    assert failed.returncode == 1 and failed.stdout == ""  # accelerate's own status: torchrun's failure, raised
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: rank 1 of 2: injected failure on rank 1 (CE_INSPECT_TEST_RANK_FAULT)"], failed.stderr
    assert (1, 2) in existing_parts(out)  # rank 1 wrote its first batch before it failed


def _accelerate(model: Path, out: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`batch` over 2 CPU ranks started by `accelerate launch` (its console script's entry point)."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--main_process_port", str(_free_port()), "-m", "ce_inspect", "batch"]
    cmd += [str(PAIRS), "-m", str(model), "-o", str(out), "--skip-invalid", *OPTIONS, *args]
    env = _env(HF_HOME=str(home), **env)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)


@pytest.mark.slow
def test_a_single_process_output_is_resumed_under_torchrun(tiny_llama_dir, reference, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    out.write_text("".join(reference[0].read_text().splitlines(keepends=True)[:5]))  # as an interrupted run left it
    proc = _torchrun(tiny_llama_dir, out, "--resume", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    _same_as_single(reference, out, summary)
    assert json.loads(summary.read_text())["resumed"] == 5


@pytest.mark.slow
def test_a_resumed_output_with_other_options_is_refused_before_any_rank_writes(tiny_llama_dir, reference, tmp_path):
    """A single-process output written with the whole-sequence view, resumed under torchrun with
    --no-sequence: refused before any rank writes a part, and the output is left as it was."""
    out = tmp_path / "out.jsonl"
    out.write_text("".join(reference[0].read_text().splitlines(keepends=True)[:5]))
    before = out.read_bytes()
    proc = _torchrun(tiny_llama_dir, out, "--resume", "--no-sequence")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and 'was written with "sequence": true, this run has "sequence": false' in errors[0]
    assert out.read_bytes() == before and _no_parts(out)


# --- the ranks' channel, with a store in memory -------------------------------------------------------------


class MemoryStore:
    """The part of c10d's Store API the session uses."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def add(self, key: str, n: int) -> int:
        value = int(self.data.get(key, b"0")) + n
        self.data[key] = str(value).encode()
        return value

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


def _session(store: MemoryStore, rank: int, world: int = 2, timeout: float = 5.0):
    from ce_inspect.distributed import Launch, Session

    return Session(Launch(rank, world, rank, world, "127.0.0.1", 1, True), store, timeout)


def test_rank_0_shows_every_rank_progress_and_gathers_outcomes():
    store = MemoryStore()
    zero, one = _session(store, 0), _session(store, 1)
    shown: list[tuple[int, int]] = []
    on_batch = zero.on_batch(lambda e, t: shown.append((e, t)))
    one.on_batch(None)(3, 30)  # rank 1 reports a batch of 3 examples, 30 tokens
    on_batch(2, 20)
    assert shown == [(5, 50)]  # rank 0's bar moves by both ranks' work
    one.on_batch(None)(1, 7)
    one.post(0, batching={"batches": 2})
    assert zero.gather(lambda e, t: shown.append((e, t))) == {1: {"code": 0, "error": None, "batching": {"batches": 2}}}
    assert shown[-1] == (1, 7) and sum(e for e, _ in shown) == 6
    assert zero.failure() is None


def test_a_failed_rank_stops_the_others_and_rank_0_names_it():
    from ce_inspect.distributed import Aborted

    store = MemoryStore()
    zero, one, two = _session(store, 0, 3), _session(store, 1, 3), _session(store, 2, 3)
    two.post(1)  # stopped because of another rank: no error of its own
    one.post(1, "data.jsonl line 7: missing field 'answer'")
    with pytest.raises(Aborted):
        zero.on_batch(None)(1, 1)
    zero.gather()
    failure = zero.failure()
    assert str(failure) == "rank 1 of 3: data.jsonl line 7: missing field 'answer'" and failure.code == 1
    store.set("ack/2", "1")  # rank 2 has read the outcome already; rank 1 reads it below
    import threading

    threading.Timer(0.3, lambda: store.set("ack/1", "1")).start()
    assert zero.finish(1) == 1 and store.get("final") == b"1"
    assert one.finish(1) == 0  # rank 0's status is the run's; the others leave quietly


def test_a_rank_that_sends_nothing_does_not_hang_the_run():
    from ce_inspect.distributed import RankFailedError

    zero = _session(MemoryStore(), 0, timeout=0.3)
    with pytest.raises(RankFailedError, match=r"rank 1 of 2 sent nothing for 0 s"):
        zero.gather()


@pytest.mark.gpu
@pytest.mark.slow
def test_two_gpus_write_what_one_gpu_writes(tiny_llama_dir, tmp_path):
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    one, summary_one = tmp_path / "one.jsonl", tmp_path / "one.json"
    proc = _single(tiny_llama_dir, one, summary_one, "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    two, summary_two = tmp_path / "two.jsonl", tmp_path / "two.json"
    proc = _torchrun(tiny_llama_dir, two, "--device", "cuda", "--summary-json", str(summary_two))
    assert proc.returncode == 0, proc.stderr
    _same_as_single((one, summary_one), two, summary_two, "device")
    assert json.loads(summary_two.read_text())["device"] == "cuda:0"  # rank 0's; rank 1 ran on cuda:1


# --- diff --input: the same sharded runner with diff's score function and report --------------------------


@pytest.fixture(scope="module")
def candidate_dir(tmp_path_factory) -> Path:
    from tests.conftest import build_model

    return build_model(tmp_path_factory.mktemp("tiny-llama-b"), "llama", seed=1)


def _diff_cmd(model: Path, candidate: Path, out: Path, summary: Path, *args: str) -> list[str]:
    return [
        *("-m", "ce_inspect", "diff", "-m", str(model), "--model-b", str(candidate), "--input", str(PAIRS)),
        *("-o", str(out), "--summary-json", str(summary), "--skip-invalid", *OPTIONS, *args),
    ]


def _diff_torchrun(model: Path, candidate: Path, out: Path, summary: Path, *args: str, **env: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += _diff_cmd(model, candidate, out, summary, *args)
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)


@pytest.fixture(scope="module")
def diff_reference(tiny_llama_dir, candidate_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff-single")
    out, summary = folder / "out.jsonl", folder / "summary.json"
    cmd = [sys.executable, *_diff_cmd(tiny_llama_dir, candidate_dir, out, summary)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return out, summary


def _diff_same_as_single(reference: tuple[Path, Path], out: Path, summary: Path) -> None:
    ref_lines, lines = reference[0].read_text().splitlines(), out.read_text().splitlines()
    assert len(lines) == len(ref_lines) == 15  # 16 records, one too long for the tiny model's context
    # Examples batched otherwise (other shares, windows) differ within float32 tolerance; ΔNLL, a difference
    # of two log-probabilities of magnitude ~5, keeps their absolute error (~2e-6).
    for k, (x, y) in enumerate(zip(ref_lines, lines), 1):
        _close(json.loads(x), json.loads(y), f"line {k}", tol=1e-5)
    ref, got = json.loads(reference[1].read_text()), json.loads(summary.read_text())
    for key in ("batching", "output"):
        ref.pop(key), got.pop(key)
    _close(ref, got, "summary", tol=1e-5)
    # The merged summary is token-weighted over the merged lines' tokens.
    kls = [t["kl"] for x in lines for t in json.loads(x)["tokens"]]
    assert got["summary"]["count"] == len(kls)
    assert math.isclose(got["summary"]["kl_mean"], math.fsum(kls) / len(kls), rel_tol=1e-12)
    assert [s["line"] for s in got["skipped"]] == [15]


@pytest.mark.slow
def test_two_ranks_diff_what_one_process_diffs(tiny_llama_dir, candidate_dir, diff_reference, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    proc = _diff_torchrun(tiny_llama_dir, candidate_dir, out, summary)
    assert proc.returncode == 0, proc.stderr
    _diff_same_as_single(diff_reference, out, summary)
    assert _no_parts(out) and "Error" not in proc.stderr
    assert json.loads(summary.read_text())["batching"]["examples"] == 15


@pytest.mark.slow
def test_a_killed_diff_rank_is_resumed_to_the_same_output(tiny_llama_dir, candidate_dir, diff_reference, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    killed = _diff_torchrun(
        tiny_llama_dir, candidate_dir, out, summary, "--sort-window", "1", CE_INSPECT_TEST_RANK_FAULT="1:kill"
    )
    assert killed.returncode != 0 and not out.exists()
    parts = existing_parts(out)
    assert (1, 2) in parts
    kept = read_sharded_resume(out, 2, 0, resume=True, parse=_diff_parse(), command="diff").resumed
    assert kept >= 1
    resumed = _diff_torchrun(tiny_llama_dir, candidate_dir, out, summary, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _diff_same_as_single(diff_reference, out, summary)
    assert json.loads(summary.read_text())["batching"]["examples"] == 15 - kept  # only the rest ran
    assert _no_parts(out)


def _diff_parse():
    from ce_inspect.diff import diff_line_stats

    return diff_line_stats


@pytest.mark.slow
def test_under_torchrun_diff_needs_input_and_audit_a_model(tiny_llama_dir, candidate_dir, tmp_path):
    def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        cmd += ["--master-port", str(_free_port()), "-m", "ce_inspect", *args]
        return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)

    model = ("-m", str(tiny_llama_dir), "--model-b", str(candidate_dir))
    proc = torchrun("diff", *model, "-p", "a", "-a", " b")
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "give DATA (or --input)" in errors[0], proc.stderr
    assert re.search(r"exitcode\s*:\s*2 ", proc.stderr)
    out = tmp_path / "audit.jsonl"
    proc = torchrun("audit", str(PAIRS), "-m", str(tiny_llama_dir), "--no-model", "-o", str(out))
    assert proc.returncode != 0 and not out.exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--no-model runs no forward pass" in errors[0], proc.stderr
    assert re.search(r"exitcode\s*:\s*2 ", proc.stderr)


# --- audit: its forward pass on the same sharded runner, its report rebuilt from the merged lines ---------------


@pytest.fixture(scope="module")
def audit_data(tiny_llama_dir, tmp_path_factory) -> Path:
    from tests.conftest import write_audit_data

    return write_audit_data(tmp_path_factory.mktemp("audit-data") / "data.jsonl", tiny_llama_dir)


def _audit_cmd(model: Path, data: Path, out: Path, *args: str) -> list[str]:
    return ["-m", "ce_inspect", "audit", str(data), "-m", str(model), "-o", str(out), "--json", *OPTIONS, *args]


def _audit_torchrun(model: Path, data: Path, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += _audit_cmd(model, data, out, *args)
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)


@pytest.fixture(scope="module")
def audit_reference(tiny_llama_dir, audit_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("audit-single") / "out.jsonl"
    cmd = [sys.executable, *_audit_cmd(tiny_llama_dir, audit_data, out, "--skip-invalid")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 3, proc.stderr  # the data set's planted defects trip the default gate
    return out, json.loads(proc.stdout)


def _audit_same_as_single(reference: tuple[Path, dict], out: Path, stdout: str, resumed: int = 0) -> None:
    ref_lines, lines = reference[0].read_text().splitlines(), out.read_text().splitlines()
    assert len(lines) == len(ref_lines) == 19  # 20 lines, one of which is not a record
    for k, (x, y) in enumerate(zip(ref_lines, lines), 1):
        _close(json.loads(x), json.loads(y), f"line {k}")
    ref, got = json.loads(json.dumps(reference[1])), json.loads(stdout)
    assert ref.pop("output") != got.pop("output")
    assert ref["loss"].pop("resumed") == 0 and got["loss"].pop("resumed") == resumed
    _close(ref, got, "report")
    checks = {c["name"]: c for c in got["checks"]}
    # What rank 0 rebuilt from the merged lines: the outlier, shown token by token, and the unscored records.
    assert [r["id"] for r in checks["loss-outlier"]["records"]] == ["outlier"]
    assert any(t["loss"] is not None for t in checks["loss-outlier"]["examples"][0]["tokens"])
    assert [u["id"] for u in got["loss"]["unscored"]] == ["untrained", "long-001"]
    assert got["loss"]["examples"] == sum(json.loads(x)["loss"]["scored"] for x in lines) == 17


@pytest.mark.slow
def test_two_ranks_audit_what_one_process_audits(tiny_llama_dir, audit_data, audit_reference, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _audit_torchrun(tiny_llama_dir, audit_data, out, "--skip-invalid")
    assert proc.returncode != 0 and re.search(r"exitcode\s*:\s*3 ", proc.stderr), proc.stderr  # the gate's 3
    _audit_same_as_single(audit_reference, out, proc.stdout)
    assert _no_parts(out)
    assert [line for line in proc.stderr.splitlines() if line.startswith("audit:")] == [
        "audit: no-trained-tokens, eot-not-trained failed (--fail-on); exit 3"
    ]


@pytest.mark.slow
def test_a_killed_audit_rank_is_resumed_to_the_same_report(tiny_llama_dir, audit_data, audit_reference, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ("--skip-invalid", "--sort-window", "1")
    killed = _audit_torchrun(tiny_llama_dir, audit_data, out, *args, CE_INSPECT_TEST_RANK_FAULT="1:kill")
    assert killed.returncode != 0 and not out.exists() and killed.stdout == ""
    parts = existing_parts(out)
    assert (1, 2) in parts
    from ce_inspect.audit import audit_line_stats

    states = {key: read_resume(p, 0, parse=audit_line_stats, command="audit") for key, p in parts.items()}
    assert len(states[(1, 2)].examples) >= 1  # its first batch's lines were written before the kill
    kept = sum(len(s.examples) for s in states.values())
    resumed = _audit_torchrun(tiny_llama_dir, audit_data, out, "--skip-invalid", "--resume")
    assert re.search(r"exitcode\s*:\s*3 ", resumed.stderr), resumed.stderr
    _audit_same_as_single(audit_reference, out, resumed.stdout, kept)
    assert _no_parts(out)


@pytest.mark.slow
def test_a_bad_record_fails_an_audit_run_with_its_line_and_no_output(tiny_llama_dir, audit_data, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _audit_torchrun(tiny_llama_dir, audit_data, out)  # no --skip-invalid: line 7 is not a record
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "line 7" in errors[0] and "--skip-invalid" in errors[0], proc.stderr
    assert re.search(r"exitcode\s*:\s*1 ", proc.stderr)
    assert not out.exists() and _no_parts(out)


# --- prefs: the same sharded runner with prefs's job (both sides, policy and reference) --------------------

PREFS = ROOT / "samples" / "prefs" / "planted.jsonl"


def _prefs_cmd(model: Path, ref: Path, out: Path, summary: Path, *args: str) -> list[str]:
    return [
        *("-m", "ce_inspect", "prefs", str(PREFS), "-m", str(model), "--ref-model", str(ref), "--max-length", "24"),
        *("-o", str(out), "--summary-json", str(summary), *OPTIONS, *args),
    ]


@pytest.mark.slow
def test_two_ranks_score_the_pairs_one_process_scores(tiny_llama_dir, candidate_dir, tmp_path):
    single, single_summary = tmp_path / "single.jsonl", tmp_path / "single.json"
    cmd = [sys.executable, *_prefs_cmd(tiny_llama_dir, candidate_dir, single, single_summary)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += _prefs_cmd(tiny_llama_dir, candidate_dir, out, summary)
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    ref_lines, lines = single.read_text().splitlines(), out.read_text().splitlines()
    assert len(lines) == len(ref_lines) == 4 and _no_parts(out)
    for k, (x, y) in enumerate(zip(ref_lines, lines), 1):
        _close(json.loads(x), json.loads(y), f"line {k}", tol=1e-5)
    ref, got = json.loads(single_summary.read_text()), json.loads(summary.read_text())
    for key in ("batching", "output"):
        ref.pop(key), got.pop(key)
    _close(ref, got, "summary", tol=1e-5)
    assert got["checks"] == {
        "identical": 3,
        "no-trained-tokens": 1,
        "prompt-differs": 0,
        "side-is-prompt": 0,
        "length-bias": 0,
        "ref-prefers-rejected": 0,
    }


# --- choices: the same sharded runner with choices's score function and report -----------------------------


@pytest.mark.slow
def test_two_ranks_score_the_questions_one_process_scores(tiny_llama_dir, tmp_path):
    questions = ROOT / "samples" / "choices.jsonl"

    def cmd(out: Path, summary: Path) -> list[str]:
        return [
            *("-m", "ce_inspect", "choices", str(questions), "-m", str(tiny_llama_dir)),
            *("-o", str(out), "--summary-json", str(summary), *OPTIONS),
        ]

    single, single_summary = tmp_path / "single.jsonl", tmp_path / "single.json"
    proc = subprocess.run(
        [sys.executable, *cmd(single, single_summary)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
    ]
    proc = subprocess.run(
        torchrun + cmd(out, summary), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    assert _no_parts(out) and "Error" not in proc.stderr
    ref_lines, lines = single.read_text().splitlines(), out.read_text().splitlines()
    assert len(lines) == len(ref_lines) == 5
    for k, (x, y) in enumerate(zip(ref_lines, lines), 1):
        _close(json.loads(x), json.loads(y), f"line {k}", tol=1e-5)
    ref, got = json.loads(single_summary.read_text()), json.loads(summary.read_text())
    for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "questions", "choices"):
        assert got[key] == ref[key], key
