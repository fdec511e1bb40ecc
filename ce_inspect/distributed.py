"""Data-parallel runs under ``torchrun`` (or ``accelerate launch``): one shard of a data set per rank.

Every rank reads the same input and encodes it (the scan), so every rank knows every example's length
and computes the same plan without asking anyone: the pending examples, in input order, are cut into
``world`` contiguous shares of about equal tokens (``sharded.shard_lines``; the share, the resume state
and the merge are in ``sharded``, this module is the launch and the ranks' store). Each rank scores its share with the
ordinary runner (``batch.run_scan``: the same length-sorted windows and batches) into its own part file
next to the output, ``.OUT.rank<r>-of-<n>.part``. When every rank has succeeded, rank 0 merges the
parts (and, on ``--resume``, what the output already held) into the output in input order, atomically,
and rebuilds the data-set summary from the merged lines the way ``--resume`` rebuilds it from a file,
so the lines and the summary are those of a single-process run whatever the number of ranks.

The part files are the resume state: after any rank crashed, ``--resume`` with the same number of ranks
keeps every part's complete lines and scores the rest of each share.

The ranks talk through a c10d ``TCPStore`` (the rendezvous store torchrun's agent already runs, or one
rank 0 hosts otherwise): each rank posts its outcome (``ok`` with its batching figures, or its error line
and exit code) and adds its progress to shared counters; rank 0 shows the whole run's progress, waits
for every outcome, merges, and posts the run's exit code, which every rank then exits with. A rank that
fails posts ``abort``, which the others check after each batch. No rank waits forever: when nothing
moves (no batch done anywhere, no outcome posted) for ``CE_INSPECT_RANK_TIMEOUT`` seconds (default
1800), the waiting rank fails. The process group (gloo for CPU tensors, nccl for CUDA ones) is set up
too, so that the ranks form a regular torch.distributed job, but no tensor travels between ranks.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ce_inspect.errors import CeInspectError, InputError, ResumeError

DEFAULT_RANK_TIMEOUT = 1800.0  # seconds without any progress before a waiting rank gives up
#: Test hook: "RANK:kill" makes that rank SIGKILL itself once its first batch is written, "RANK:error" raise there.
FAULT_ENV = "CE_INSPECT_TEST_RANK_FAULT"


class RankFailedError(CeInspectError):
    """Another rank failed; the message is that rank's error line, ``code`` its exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Aborted(Exception):  # noqa: N818 - not an error of this rank: another rank failed first
    """Raised on a rank that stops because another one failed (its part file keeps its complete lines)."""


# --- the launch: what torchrun (or accelerate launch) put into the environment -----------------------------


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent hosts the store; otherwise rank 0 does

    @property
    def label(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def detect_launch(environ: dict[str, str] | None = None) -> Launch | None:
    """The launch described by the standard variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or
    None for a single process (no WORLD_SIZE, or WORLD_SIZE 1). torchrun sets them, and so does
    ``accelerate launch --multi_gpu``, which starts the ranks through torchrun's launcher (on CPUs too)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        _refuse_mpi_ranks(env)
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={env['WORLD_SIZE']!r} is not a number of processes") from None
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise InputError(
            f"WORLD_SIZE is {world} but {', '.join(missing)} is not set; start the ranks with torchrun "
            "or accelerate launch"
        )
    rank_timeout(env)  # a bad value stops every rank here, before any joins the run
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    return Launch(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
        master_addr=env["MASTER_ADDR"],
        master_port=int(env["MASTER_PORT"]),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
    )


TIMEOUT_ENV = "CE_INSPECT_RANK_TIMEOUT"


def rank_timeout(environ: Any = None) -> float:
    """``CE_INSPECT_RANK_TIMEOUT`` in seconds (``DEFAULT_RANK_TIMEOUT`` when unset): a finite number above 0."""
    import math

    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_RANK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0: it is how long a rank waits while no "
            f"rank makes progress (default {DEFAULT_RANK_TIMEOUT:g}); set it to e.g. 3600, or unset it"
        )
    return value


#: How MPI launchers (mpirun, mpiexec; ``accelerate launch --cpu`` with an mpirun host file) tell each process
#: the number of processes: Open MPI, Intel MPI / MPICH, MVAPICH.
MPI_WORLD_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def _refuse_mpi_ranks(env: Any) -> None:
    """Processes started by MPI alone carry no WORLD_SIZE: each would take itself for a single process and
    score the whole data set into the same output. Refuse them, naming the launchers that work."""
    for name in MPI_WORLD_SIZE:
        try:
            size = int(env.get(name, "1"))
        except ValueError:
            continue
        if size > 1:
            raise InputError(
                f"{name}={size}: this process is one of {size} started by MPI (mpirun, or accelerate launch "
                "--cpu with an mpirun host file), which sets no WORLD_SIZE or RANK; start the ranks with "
                "torchrun or accelerate launch --multi_gpu (CPU ranks too)"
            )


def rank_device(device: str, launch: Launch | None) -> str:
    """Each rank takes ``cuda:LOCAL_RANK`` when the device is CUDA without an index."""
    if launch is not None and device == "cuda":
        return f"cuda:{launch.local_rank}"
    return device


def rank_gpus(device_count: int, launch: Launch | None) -> list[int] | None:
    """The GPUs of this rank under ``device_map``: the node's GPUs cut into one block per local rank.

    None outside a launch (every GPU). With 8 GPUs and 2 ranks per node, rank 0 gets 0-3 and rank 1 4-7.
    """
    if launch is None:
        return None
    per_rank = device_count // launch.local_world_size
    if per_rank < 1:
        raise InputError(
            f"`device_map` with {launch.local_world_size} ranks on this node needs at least one GPU per rank; "
            f"this node has {device_count}"
        )
    first = launch.local_rank * per_rank
    return list(range(first, first + per_rank))


def part_path(output: str | os.PathLike[str], rank: int, world: int) -> Path:
    """Where ``rank`` writes its share: a hidden file next to the output (same folder: same file system)."""
    out = Path(output)
    return out.with_name(f".{out.name}.rank{rank}-of-{world}.part")


def existing_parts(output: str | os.PathLike[str]) -> dict[tuple[int, int], Path]:
    """The part files next to ``output``, by (rank, world)."""
    out = Path(output)
    found: dict[tuple[int, int], Path] = {}
    try:
        names = os.listdir(out.parent if str(out.parent) else ".")
    except OSError:
        return found
    pattern = re.compile(re.escape(f".{out.name}.") + r"rank(\d+)-of-(\d+)\.part")
    for name in names:
        m = pattern.fullmatch(name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = out.with_name(name)
    return found


def check_parts(output: str | os.PathLike[str], world: int | None, *, resume: bool, force: bool) -> None:
    """Refuse to start over part files of an unfinished run unless told (``force``), and to resume them
    with another number of ranks (``world``; None: a single process, which cannot resume them)."""
    parts = existing_parts(output)
    if not parts or force:
        return
    worlds = sorted({w for _, w in parts})
    names = ", ".join(p.name for _, p in sorted(parts.items()))
    if not resume:
        raise InputError(
            f"`output` {output}: part files of an unfinished torchrun run are next to it ({names}); pass "
            "`resume` to continue that run or `force` to start over"
        )
    if world is None or worlds != [world]:
        how = "a single process" if world is None else f"{world} ranks"
        raise ResumeError(
            f"`resume`: {output} has part files of a torchrun run with {' and '.join(map(str, worlds))} ranks "
            f"({names}); this is {how}: resume under torchrun with --nproc-per-node x --nnodes = "
            f"{worlds[0]}, or start over with `force`"
        )


@dataclass
class Session:
    """This process's place in the run, and the store the ranks talk through."""

    launch: Launch
    store: Any
    timeout: float = DEFAULT_RANK_TIMEOUT
    posted: bool = False
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    fault: str | None = None

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world(self) -> int:
        return self.launch.world_size

    # progress and abort ------------------------------------------------------------------------------

    def add_progress(self, examples: int, tokens: int) -> tuple[int, int]:
        """Add this rank's batch to the run's counters; the run's totals so far."""
        return self.store.add("examples", examples), self.store.add("tokens", tokens)

    def progress(self) -> tuple[int, int]:
        return self.store.add("examples", 0), self.store.add("tokens", 0)

    def aborted(self) -> bool:
        return bool(self.store.check(["abort"]))

    def on_batch(self, show: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
        """The runner's batch callback on this rank: count it for the run, show the run's totals on rank
        0 (through ``show``, which takes increments), stop when another rank has failed."""
        shown = [0, 0]
        batches = [0]

        def callback(examples: int, tokens: int) -> None:
            total = self.add_progress(examples, tokens)
            if show is not None:
                show(total[0] - shown[0], total[1] - shown[1])
                shown[:] = total
            batches[0] += 1
            if self.fault is not None:
                _inject_fault(self.fault, self.rank, batches[0])
            if self.aborted():
                raise Aborted

        self._shown = shown  # rank 0 keeps advancing the bar while it waits for the others
        return callback

    def barrier(self, name: str) -> None:
        """Wait until every rank got here (or one failed: then stop as well)."""
        self.store.add(f"barrier/{name}", 1)

        def ready() -> bool:
            if self.aborted():
                raise Aborted
            return self.store.add(f"barrier/{name}", 0) >= self.world

        self._wait(ready, lambda: "a rank")

    # outcomes -------------------------------------------------------------------------------------------

    def post(self, code: int, error: str | None = None, **extra: Any) -> None:
        """This rank's outcome (once): exit code 0 with its figures, or its error line and exit code."""
        if self.posted:
            return
        if code != 0:
            self.store.set("abort", str(self.rank))
        self.store.set(f"outcome/{self.rank}", json.dumps({"code": code, "error": error, **extra}))
        self.posted = True

    def gather(self, show: Callable[[int, int], None] | None = None) -> dict[int, dict[str, Any]]:
        """Rank 0: wait for every other rank's outcome (showing progress meanwhile); they are returned."""
        others = [r for r in range(self.world) if r != self.rank and r not in self.outcomes]
        shown = getattr(self, "_shown", [0, 0])

        def step() -> bool:
            for r in list(others):
                if self.store.check([f"outcome/{r}"]):
                    self.outcomes[r] = json.loads(self.store.get(f"outcome/{r}"))
                    others.remove(r)
            if show is not None:
                total = self.progress()
                show(total[0] - shown[0], total[1] - shown[1])
                shown[:] = total
            return not others

        self._wait(step, lambda: f"rank {others[0] if others else '?'} of {self.world}")
        return self.outcomes

    def failure(self) -> RankFailedError | None:
        """The first other rank's error among the outcomes gathered, or None if every one succeeded."""
        failed = sorted((r, o) for r, o in self.outcomes.items() if o["code"] != 0)
        if not failed:
            return None
        rank, outcome = next(((r, o) for r, o in failed if o.get("error")), failed[0])
        error = outcome.get("error") or f"exit status {outcome['code']}"
        return RankFailedError(f"rank {rank} of {self.world}: {error}", outcome["code"])

    def finish(self, code: int) -> int:
        """The run's end on this rank: rank 0 posts the run's exit code and waits until every rank has read
        it (it may host the store); the others wait for it and exit 0. Returns the code to exit with."""
        if self.rank == 0:
            self.store.set("final", str(code))
            acks = [f"ack/{r}" for r in range(1, self.world)]
            self._wait(lambda: bool(self.store.check(acks)), lambda: "the other ranks", limit=60.0)
            return code
        self._wait(lambda: bool(self.store.check(["final"])), lambda: f"rank 0 of {self.world}")
        self.store.set(f"ack/{self.rank}", "1")
        # Rank 0's status is the run's (torchrun reports it); a rank that also exited non-zero would make
        # torchrun stop rank 0 with SIGTERM and name that rank instead of the error rank 0 has printed.
        return 0

    def _wait(self, ready: Callable[[], bool], who: Callable[[], str], limit: float | None = None) -> None:
        limit = self.timeout if limit is None else limit
        last_change, last = time.monotonic(), None
        while not ready():
            now = (self.progress(), len(self.outcomes))
            if now != last:
                last_change, last = time.monotonic(), now
            elif time.monotonic() - last_change > limit:
                raise RankFailedError(
                    f"{who()} sent nothing for {limit:.0f} s (no batch done by any rank); giving up "
                    "(CE_INSPECT_RANK_TIMEOUT sets the wait)"
                )
            time.sleep(0.1)


_SESSION: Session | None = None


def current_session() -> Session | None:
    """The session of this process when it runs as one rank of several (set up by ``start``), else None."""
    return _SESSION


def start(launch: Launch) -> Session:
    """Join the run: connect to the store, set up the process group, and become ``current_session``."""
    import datetime

    import torch
    import torch.distributed as dist

    global _SESSION
    timeout = rank_timeout()
    store = dist.TCPStore(
        launch.master_addr,
        launch.master_port,
        world_size=launch.world_size,
        is_master=launch.rank == 0 and not launch.agent_store,
        timeout=datetime.timedelta(seconds=timeout),
        multi_tenant=True,
    )
    # torchrun keeps its store across restarts (--max-restarts): each attempt gets its own keys.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"ce_inspect/{attempt}/pg", store),
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    _SESSION = Session(
        launch, dist.PrefixStore(f"ce_inspect/{attempt}/run", store), timeout, fault=os.environ.get(FAULT_ENV)
    )
    return _SESSION


def stop() -> None:
    global _SESSION
    _SESSION = None
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the run's outcome is already decided; teardown noise is not news
        pass


def _inject_fault(fault: str, rank: int, batches: int) -> None:
    target, _, kind = fault.partition(":")
    if int(target) != rank or batches != 2:  # the first batch's lines are written by now
        return
    if kind == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    raise InputError(f"injected failure on rank {rank} ({FAULT_ENV})")


__all__ = [
    "Launch",
    "RankFailedError",
    "Session",
    "check_parts",
    "current_session",
    "detect_launch",
    "existing_parts",
    "part_path",
    "rank_device",
    "rank_gpus",
    "start",
]
