"""Output: whole lines only. ``JsonlSink`` writes one JSON document per line and cuts an interrupted line
back off; ``check_batch_output`` and ``output_conflict`` say whether an output may be written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ce_inspect.contract import dumps
from ce_inspect.errors import InputError
from ce_inspect.files import check_output, open_stream, stream_write_error

if TYPE_CHECKING:
    from ce_inspect.dataset.resume import ResumeState
    from ce_inspect.files import OutputTarget


class JsonlSink:
    """Writes one JSON document per line, each flushed as soon as it is complete.

    Only whole lines stay in a regular file: if writing a line is interrupted (Ctrl-C, an error), leaving
    the ``with`` block cuts the file back to the end of the last complete line. A ``kill -9`` can still
    tear the last line; ``read_resume`` drops such a tail. A FIFO, a device or ``/dev/stdout`` is written
    through (see ``files``); nothing there can be cut back or resumed.
    """

    def __init__(
        self,
        stream: IO[bytes] | IO[str],
        *,
        name: str | None,
        committed: int = 0,
        lines: int = 0,
        regular: bool = True,
    ) -> None:
        self._stream = stream
        self.name = name  # the file's path, or None for stdout
        self.committed = committed  # bytes of complete lines
        self.lines = lines  # complete lines in the file, resumed ones included
        self.regular = regular  # a regular file, which can be cut back to its last complete line

    @classmethod
    def to_stdout(cls, stream: IO[str]) -> JsonlSink:
        return cls(stream, name=None)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, resume: ResumeState | None = None) -> JsonlSink:
        """A fresh output (a regular file emptied in place, keeping its mode and links), or the resumed
        file cut back to its last complete line."""
        path = Path(path)
        try:
            if resume is None:
                fh, regular = open_stream(path)  # closed in __exit__
                return cls(fh, name=str(path), regular=regular)
            fh = open(path, "r+b", buffering=0)
            fh.truncate(resume.size)
            fh.seek(resume.size)
            return cls(fh, name=str(path), committed=resume.size, lines=len(resume.examples))
        except OSError as exc:
            raise InputError(f"`output` {path}: cannot write it ({exc.strerror})") from None

    def write(self, obj: Any) -> None:
        text = dumps(obj) + "\n"
        if self.name is None:
            self._stream.write(text)  # type: ignore[arg-type]
            self._stream.flush()
        else:
            data = memoryview(text.encode("utf-8"))
            try:
                while data:  # a raw file may take fewer bytes than asked
                    written = self._stream.write(data)  # type: ignore[arg-type]
                    data = data[written or 0 :]
            except OSError as exc:
                raise stream_write_error(self.name, exc, lines=self.lines, resumable=self.regular) from None
            self.committed += len(text.encode("utf-8"))
        self.lines += 1

    def close(self) -> None:
        if self.name is not None:
            self._stream.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.name is not None and self.regular and exc_type is not None:
            try:
                self._stream.truncate(self.committed)  # type: ignore[union-attr]
            except OSError:
                pass
        self.close()


def check_batch_output(output: Path, input: str | os.PathLike[str], *, resume: bool, force: bool) -> OutputTarget:
    """The checks of ``files.check_output`` for batch's JSON lines, plus batch's own rule: an existing
    file is continued (``resume``) or replaced (``force``), never silently either. Raises ``InputError``."""
    # An existing file needs resume (and read_resume then checks every byte of it) or force (which
    # replaces whatever is there), so the first-bytes test of check_output has nothing to add.
    target = check_output(output, inputs=[("the input file", input)], label="`output`", force=True)
    if resume and target.exists and not target.regular:
        raise InputError(f"`output` {output}: `resume` continues a regular file, and this is not one")
    if target.exists and target.regular and not (resume or force):
        raise InputError(f"`output` {output} already exists; pass `resume` to continue it or `force` to replace it")
    return target


def output_conflict(output: Path, input: Path, *, resume: bool, force: bool) -> str | None:
    """Why ``output`` must not be written (the message of ``check_batch_output``), or None."""
    try:
        check_batch_output(output, input, resume=resume, force=force)
    except InputError as exc:
        return str(exc)
    return None


__all__ = [
    "JsonlSink",
    "check_batch_output",
    "output_conflict",
]
