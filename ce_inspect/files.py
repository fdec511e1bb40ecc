"""Files the user names: input text read verbatim, and output files checked and written by one set of rules.

**Inputs.** ``read_text`` reads a file (or ``-``, stdin) as bytes and decodes them as strict UTF-8:
the text is the file's, byte for byte (CRLF stays CRLF, a BOM stays), as ``batch`` keeps the text of
a JSONL line. ``spool_stdin`` copies stdin to a temporary file for readers that need two passes;
``spooled_input`` does the same for every input that can be read only once (``-``, a FIFO, ``/dev/stdin``,
a ``<(...)`` pipe given as a path, a device), so that a data set is read from its source exactly once.

**Outputs**, as GNU tools keep them:

- ``check_output`` refuses a folder, a path whose folder does not exist, a path that is the same file
  as one of the command's inputs (through links: same device and inode), and an existing regular file
  that ce-inspect did not write, unless ``force``. Every command calls it for every output it will
  write before the model loads, so a bad path costs nothing.
- **ce-inspect's own output** is recognised by its first bytes: every document and every JSON line
  ce-inspect writes is an object whose first key is ``schema_version`` (``{"schema_version": 1, ...``
  or, indented, ``{\\n  "schema_version": 1, ...``). An empty file holds nothing to lose and counts as
  ours too. So rerunning ``run -o out.json`` replaces the previous result, while ``-o notes.txt``
  onto someone's text is refused.
- ``write_output`` writes a whole document. To a regular file (or a new path) it writes atomically: a
  temporary file in the same folder, fsync, then ``os.replace``; a failure leaves the old file as it was.
  A link is followed (its target is replaced, the link stays a link); a new file gets the usual mode
  (0666 less the umask) and an existing file keeps its mode. Anything else (a FIFO, a terminal,
  ``/dev/null``, ``/dev/stdout``) is written through, never renamed over.
- ``write_outputs`` writes a command's whole documents (``-o``, ``--summary-json``, reports) all or
  nothing: every temporary file first, then the write-through paths, then the renames.
- ``output_lock`` keeps two runs from writing one file at once: an advisory ``flock`` on
  ``.NAME.lock`` next to the file, holding the writer's PID; the second run gets a one-line error.
  Every writer takes it (streams for their whole run, ``write_outputs`` while it writes). The lock
  file is opened without following links and taken over only when it holds nothing but a PID.

Messages name the output by the label the caller gives (a library parameter in backquotes, which the
command line shows as its flag).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ce_inspect.errors import InputError, read_error

#: The first bytes of every JSON document and JSON line ce-inspect writes (see the module docstring).
OURS = re.compile(rb'\A\{\s*"schema_version":\s*\d')
_HEAD = 64
# Paths that name one of this process's open descriptors: writing them must reach that descriptor.
_DESCRIPTOR = re.compile(r"\A/(dev/(stdout|stderr|fd/\d+)|proc/(self|\d+)/fd/\d+)\Z")


# --- inputs ----------------------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str], label: str) -> bytes:
    """The bytes of ``path`` (``-``: all of stdin); a failure is a one-line error naming ``label``."""
    if str(path) == "-":
        stream = _stdin(label)
        try:
            return stream.read()
        except OSError as exc:
            raise read_error(f"{label} (stdin)", exc) from None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise read_error(f"{label} {path}", exc) from None


def read_text(path: str | os.PathLike[str], label: str) -> str:
    """The text of ``path`` (``-``: stdin), verbatim: its bytes decoded as strict UTF-8, nothing translated."""
    data = read_bytes(path, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise read_error(f"{label} (stdin)" if str(path) == "-" else f"{label} {path}", exc) from None


def _stdin(label: str) -> IO[bytes]:
    # A closed stdin (`<&-`) leaves sys.stdin None; a replaced one (tests) may have no byte buffer.
    stream = sys.stdin
    if stream is None:
        raise InputError(f"{label} is '-' but stdin is closed: there is nothing to read")
    return getattr(stream, "buffer", None) or _Encoded(stream)


class _Encoded:
    """A text stream read as UTF-8 bytes (a stand-in stdin without a byte buffer)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def read(self) -> bytes:
        return self._stream.read().encode("utf-8", "surrogateescape")


def spool_stdin(label: str) -> Path:
    """Copy all of stdin to a new temporary file and return its path; the caller removes it.

    The copy has no suffix: what it holds (JSON Lines or a JSON array) is told from its first character.
    """
    stream = _stdin(label)
    if isinstance(stream, _Encoded):
        import io

        stream = io.BytesIO(stream.read())  # type: ignore[assignment]
    return _spool(stream, "stdin", "", f"{label} (stdin)")  # type: ignore[arg-type]


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` can be read only once: ``-`` (stdin), or something that is neither a regular file nor
    a folder (a FIFO, a pipe named as ``/dev/stdin`` or ``/dev/fd/N``, a device). A missing path is not."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unreadable: whatever reads it names the problem
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


#: Compressed data sets, recognised by their name's last suffix (``data.readers`` decompresses them): the codec.
COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd"}


def kept_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix a copy of ``path`` keeps to be read as ``path`` is: ``.jsonl``, and ``.jsonl.gz`` (both
    suffixes) for a compressed file."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSION_SUFFIXES:
        return "".join(p.suffixes[-2:])
    return p.suffix


@contextmanager
def spooled_input(path: str | os.PathLike[str], label: str) -> Iterator[Path]:
    """``path`` as a file that can be read as often as a reader needs, for the duration of the ``with``.

    A regular file, a folder or a name that is not a file (a Hub id; a missing file, which its reader names)
    is ``path`` itself. An input that can be read only once (``is_stream``) is read once, to its end, into a
    temporary file (which keeps the name's suffix: ``data.jsonl`` stays JSON Lines), removed at the end.
    ``label`` names the input in errors.
    """
    if not is_stream(path):
        yield Path(path)
        return
    if str(path) == "-":
        spool = spool_stdin(label)
    else:
        try:
            source = open(path, "rb")  # closed below; a FIFO waits here for its writer, as `cat` does
        except OSError as exc:
            raise read_error(f"{label} {path}", exc) from None
        with source:
            spool = _spool(source, "input", kept_suffix(path), f"{label} {path}")
    try:
        yield spool
    finally:
        spool.unlink(missing_ok=True)


def _spool(stream: IO[bytes], kind: str, suffix: str, name: str) -> Path:
    """Copy ``stream`` to its end into a new temporary file; its path. ``name`` names the input in errors."""
    import tempfile

    try:
        fd, spool = tempfile.mkstemp(prefix=f"ce-inspect-{kind}-", suffix=suffix)
    except OSError as exc:
        raise InputError(f"{name}: cannot copy it to a temporary file ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            while True:
                try:
                    chunk = stream.read(1 << 20)
                except OSError as exc:
                    raise read_error(name, exc) from None
                if not chunk:
                    break
                fh.write(chunk)
    except OSError as exc:  # writing the copy: a read error is an InputError by now
        Path(spool).unlink(missing_ok=True)
        raise InputError(f"{name}: cannot copy it to a temporary file ({exc.strerror})") from None
    except BaseException:
        Path(spool).unlink(missing_ok=True)
        raise
    return Path(spool)


# --- outputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTarget:
    """What ``check_output`` found at an output path."""

    path: Path
    exists: bool
    regular: bool  # a regular file, or a path that does not exist yet (it will be one)
    ours: bool  # exists and looks like ce-inspect's output (or is empty)


def is_ours(path: str | os.PathLike[str], marks: Sequence[re.Pattern[bytes]] = (OURS,)) -> bool:
    """Whether the regular file at ``path`` is empty or starts like a document ce-inspect writes.

    ``marks`` are the first-bytes patterns of the writer's formats: JSON documents and lines by default;
    a command that writes another format (an HTML or Markdown report) passes the mark it writes first.
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
    return not head or any(mark.match(head) is not None for mark in marks)


def check_output(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
    label: str = "`output`",
    force: bool = False,
    marks: Sequence[re.Pattern[bytes]] = (OURS,),
    mark_text: str = '{"schema_version": ...}',
) -> OutputTarget:
    """Refuse an output path that cannot or must not be written; call it before loading the model.

    ``inputs`` are ``(label, path)`` pairs of the files the command reads (``None`` is skipped, ``-``
    means this process's stdin). ``force`` allows replacing a regular file ce-inspect did not write;
    ``marks`` say how this command's own output starts (see ``is_ours``), and ``mark_text`` says it in
    the refusal's words.
    """
    path = Path(path)
    name = f"{label} {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_folder(path, name)
        return OutputTarget(path, exists=False, regular=True, ours=False)
    except OSError as exc:
        raise InputError(f"{name}: cannot use it ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a folder; give a file path")
    regular = stat.S_ISREG(st.st_mode)
    if regular or stat.S_ISFIFO(st.st_mode):  # reading and writing one device (/dev/null) harms nothing
        for input_label, input_path in inputs:
            if input_path is not None and _same_file(st, input_path):
                raise InputError(f"{name}: is the same file as {input_label}; write the output elsewhere")
    if not regular:
        return OutputTarget(path, exists=True, regular=False, ours=False)
    _check_folder(path, name)  # the atomic write puts its temporary file there
    try:
        ours = is_ours(path, marks)
    except OSError as exc:
        raise InputError(f"{name}: cannot read it to check what it holds ({exc.strerror})") from None
    if not ours and not force:
        raise InputError(
            f"{name}: exists and was not written by ce-inspect (it does not start with {mark_text}); "
            "pass `force` to replace it, or give another path"
        )
    return OutputTarget(path, exists=True, regular=True, ours=ours)


def _check_folder(path: Path, name: str) -> None:
    # A dangling link is written through to its target: the target's folder is the one that must exist.
    real = Path(os.path.realpath(path))
    folder = real.parent
    if not folder.is_dir():
        shown = path.parent if str(path.parent) not in ("", ".") else folder
        raise InputError(f"{name}: the folder {shown} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{name}: cannot write in the folder {folder} (permission denied)")


def _same_file(st: os.stat_result, other: str | os.PathLike[str]) -> bool:
    try:
        if str(other) == "-":
            if sys.stdin is None:
                return False
            ost = os.fstat(sys.stdin.fileno())
        else:
            ost = os.stat(other)
    except (OSError, ValueError, AttributeError):
        return False  # an input that cannot be statted is reported by whatever reads it
    return (st.st_dev, st.st_ino) == (ost.st_dev, ost.st_ino)


def writes_through(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is written in place (a device, FIFO, socket, or a name of an open descriptor)."""
    if _DESCRIPTOR.match(str(path)):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def is_stdout(path: str | os.PathLike[str]) -> bool:
    """Whether writing ``path`` writes this process's stdout (``/dev/stdout``, or the file stdout goes to)."""
    if _DESCRIPTOR.match(str(path)) and str(path).endswith(("stdout", "/1")):
        return True
    try:
        st, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino)


def open_through(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a path that is written in place. A descriptor's file is appended to, as the shell left it."""
    flags = os.O_WRONLY | (os.O_APPEND if _DESCRIPTOR.match(str(path)) else 0)
    return os.fdopen(os.open(path, flags), "wb", buffering=0)


def open_stream(path: str | os.PathLike[str]) -> tuple[IO[bytes], bool]:
    """Open ``path`` for a stream of lines, unbuffered: ``(file, regular)``.

    A regular file (or new path) is truncated in place, through any link, keeping its mode; a new one
    gets 0666 less the umask. Anything else is written through.
    """
    if writes_through(path):
        return open_through(path), False
    return open(path, "wb", buffering=0), True


def write_output(path: str | os.PathLike[str], text: str, *, label: str = "`output`") -> None:
    """Write ``text`` to ``path`` under its lock: atomically to a regular file or new path, through to
    anything else (``write_outputs`` with one document)."""
    write_outputs([(path, text, label)])


def write_outputs(documents: Sequence[tuple[str | os.PathLike[str], str, str]]) -> None:
    """Write whole documents, ``(path, text, label)`` each, all or nothing.

    Every regular path (or new path) is locked (``output_lock``) for the write, as a streaming writer
    locks it, so no two ce-inspect runs replace one file at once. Then every regular file's text goes to
    a temporary file next to it (fsynced), then the write-through paths (a device, FIFO, ``/dev/stdout``)
    are written, and only when all of that succeeded are the temporary files renamed into place: a
    failure anywhere (a full disk, ``/dev/full``) leaves every regular file as it was and no temporary
    file. A device written before the failure may hold part of its text, as it would with ``cat``.
    """
    with ExitStack() as stack:
        locked: set[Path] = set()
        for path, _, label in documents:
            if not writes_through(path) and lock_path(path) not in locked:
                locked.add(lock_path(path))
                stack.enter_context(output_lock(path, label=label))
        staged: list[tuple[str, Path, str | os.PathLike[str], str]] = []
        several = "; no output file was changed" if len(documents) > 1 else ""
        try:
            for path, text, label in documents:
                if not writes_through(path):
                    tmp, target = _stage(path, text.encode("utf-8"), label, several)
                    staged.append((tmp, target, path, label))
            for path, text, label in documents:
                if writes_through(path):
                    try:
                        with open_through(path) as fh:
                            write_all(fh, text.encode("utf-8"))
                    except OSError as exc:
                        raise InputError(f"{label} {path}: cannot write it ({exc.strerror}){several}") from None
            for i, (tmp, target, path, label) in enumerate(staged):
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    done = ", ".join(str(p) for _, _, p, _ in staged[:i])
                    kept = f"; {done} already replaced" if done else several
                    raise InputError(f"{label} {path}: cannot write it ({exc.strerror}){kept}") from None
        finally:
            for tmp, *_ in staged:
                Path(tmp).unlink(missing_ok=True)  # nothing left once renamed
        for folder in {target.parent for _, target, _, _ in staged}:
            _sync_folder(folder)


def _stage(path: str | os.PathLike[str], data: bytes, label: str, several: str = "") -> tuple[str, Path]:
    """``data`` in a new fsynced temporary file next to ``path``'s real target: ``(temporary, target)``."""
    try:
        fd, tmp, target = _temporary_for(path)
    except OSError as exc:
        raise InputError(f"{label} {path}: cannot write it ({exc.strerror}){several}") from None
    try:
        with os.fdopen(fd, "wb", buffering=0) as fh:
            write_all(fh, data)
            os.fsync(fh.fileno())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{label} {path}: cannot write it ({_reason(exc)}){several}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp, target


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: no space left on device"
    return exc.strerror or str(exc)


def _temporary_for(path: str | os.PathLike[str]) -> tuple[int, str, Path]:
    """A temporary file next to the real target of ``path`` (links followed), with the mode the target
    has (or 0666 less the umask): ``(descriptor, temporary, target)``."""
    target = Path(os.path.realpath(path))
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = _temporary(target)
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
    return fd, tmp, target


@contextmanager
def atomic_stream(path: str | os.PathLike[str], *, label: str = "`output`") -> Iterator[IO[bytes]]:
    """A binary stream whose bytes replace ``path`` only when the block ends without an error.

    A regular file (or new path) is written under a temporary name next to its real target (links
    followed), with the mode it had (or 0666 less the umask), fsynced and renamed over it; an error
    inside the block leaves the old file as it was and no temporary file. A device, FIFO or
    ``/dev/stdout`` is written through.
    """
    path = Path(path)
    try:
        if writes_through(path):
            with open_through(path) as fh:
                yield fh
            return
        fd, tmp, target = _temporary_for(path)
    except OSError as exc:
        raise InputError(f"{label} {path}: cannot write it ({_reason(exc)})") from None
    try:
        with os.fdopen(fd, "wb", buffering=0) as fh:
            yield fh
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{label} {path}: cannot write it ({_reason(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def stream_write_error(path: str | os.PathLike[str], exc: OSError, *, lines: int, resumable: bool) -> InputError:
    """The one-line error of a stream of JSON lines (``batch -o``, ``audit -o``) whose write failed.

    ``lines`` complete lines are in the file; a ``resumable`` writer (a regular file, cut back to its last
    complete line on the way out) says that ``--resume`` continues from them.
    """
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    problem = "the disk is full (no space left on device)" if full else f"cannot write it ({exc.strerror or exc})"
    kept = f"the {lines} line{'s' if lines != 1 else ''} written so far are whole"
    if resumable:
        kept += f": {'free some space' if full else 'fix that'} and rerun with `resume` to continue"
    return InputError(f"`output` {path}: {problem}; {kept}")


def write_all(fh: IO[bytes], data: bytes) -> None:
    """Every byte of ``data`` to ``fh``: a raw (unbuffered) file may take fewer bytes than asked."""
    view = memoryview(data)
    while view:  # a raw file may take fewer bytes than asked
        view = view[fh.write(view) or 0 :]


def _temporary(target: Path) -> tuple[int, str]:
    """A new file next to ``target``, created with 0666 so that the umask gives it the usual mode."""
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {target}")


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is already atomic
    finally:
        os.close(fd)


def lock_path(path: str | os.PathLike[str]) -> Path:
    """Where the lock of output ``path`` lives: ``.NAME.lock`` next to the file it names (links followed)."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name}.lock"


@contextmanager
def output_lock(path: str | os.PathLike[str], *, label: str = "`output`") -> Iterator[None]:
    """Hold an advisory lock on output ``path`` for the block; a second holder gets a one-line error.

    Only regular files (and new paths) are locked. The lock file holds the writer's PID and is removed
    on the way out; after a ``kill -9`` it stays, but the kernel has released the lock with the process.
    The lock file is opened without following a link and never truncated unless it holds nothing but a
    PID (what a ce-inspect run left): a link, a FIFO, a hard link or any other file planted at
    ``.NAME.lock`` is refused, and the file it names stays as it was.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run without the lock
        yield
        return
    if writes_through(path):
        yield
        return
    where = lock_path(path)
    fd = _acquire(fcntl, where, f"{label} {path}")
    try:
        try:
            os.ftruncate(fd, 0)  # _acquire checked that it holds nothing but a PID
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise InputError(f"{label} {path}: cannot write the lock file {where} ({_reason(exc)})") from None
        yield
    finally:
        try:
            if os.fstat(fd).st_ino == os.stat(where, follow_symlinks=False).st_ino:
                where.unlink()
        except OSError:
            pass
        os.close(fd)  # closing releases the lock


#: What a lock file may hold for ce-inspect to take it over: nothing, or the PID a previous run wrote.
_LOCK_TEXT = re.compile(rb"\A(\d{1,20}\n?)?\Z")


def _remove_hint(name: str) -> str:
    return f"remove it if no ce-inspect run is writing {name.split(' ', 1)[-1]}"  # name: "LABEL PATH"


def _open_lock(where: Path, name: str) -> int:
    """Open (or create) the lock file without following a link; refuse anything but a lone regular file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    remove = _remove_hint(name)
    try:
        fd = os.open(where, flags, 0o666)
    except OSError as exc:
        if os.path.islink(where):
            raise InputError(
                f"{name}: the lock file {where} is a link, which ce-inspect never writes through; {remove}"
            ) from None
        raise InputError(f"{name}: cannot create the lock file {where} ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a regular file"
        raise InputError(f"{name}: the lock file {where} {what}, so ce-inspect did not make it; {remove}")
    return fd


def _acquire(fcntl, where: Path, name: str) -> int:  # type: ignore[no-untyped-def]
    while True:
        fd = _open_lock(where, name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"PID {pid}" if pid.isdigit() else "another process"
            raise InputError(
                f"{name}: another ce-inspect run ({who}) is writing it; wait for it to finish or write elsewhere"
            ) from None
        # The previous holder may have removed the lock file between our open and our flock: then we
        # hold a lock on a file nobody else will open, so start again on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(where, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        if _LOCK_TEXT.match(os.pread(fd, 64, 0)) is None:
            os.close(fd)
            raise InputError(
                f"{name}: the lock file {where} holds something other than a ce-inspect PID, so ce-inspect "
                f"did not make it; {_remove_hint(name)}"
            )
        return fd


__all__ = [
    "OURS",
    "read_bytes",
    "read_text",
    "is_stream",
    "spool_stdin",
    "stream_write_error",
    "spooled_input",
    "OutputTarget",
    "check_output",
    "is_ours",
    "is_stdout",
    "lock_path",
    "open_stream",
    "open_through",
    "output_lock",
    "write_output",
    "write_outputs",
    "writes_through",
    "write_all",
    "atomic_stream",
]
