"""ce_inspect.files: input text verbatim, and the one validator and writer of output files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT

from ce_inspect.errors import InputError
from ce_inspect.files import check_output, is_ours, lock_path, output_lock, read_text, write_output

DOC = '{\n  "schema_version": 1,\n  "model": "m"\n}\n'


@pytest.fixture
def umask():
    """Set a umask for one test and put the previous one back."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


# --- inputs ----------------------------------------------------------------------------------------------


def test_read_text_keeps_every_byte(tmp_path):
    raw = "\ufeffline one\r\nline two\rthree\n".encode()
    f = tmp_path / "p.txt"
    f.write_bytes(raw)
    assert read_text(f, "`prompt_file`").encode("utf-8") == raw  # CRLF, lone CR and BOM kept


def test_read_text_refuses_bytes_that_are_not_utf8(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"Hi \xff there")
    with pytest.raises(InputError, match=r"p.txt: not UTF-8 text \(invalid start byte at byte 3\)"):
        read_text(f, "`prompt_file`")


# --- check_output ----------------------------------------------------------------------------------------


def test_check_output_refuses_a_folder_and_a_missing_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(InputError, match="the folder .*nope does not exist"):
        check_output(tmp_path / "nope" / "out.json")
    assert check_output(tmp_path / "new.json").exists is False


def test_check_output_refuses_an_input_even_through_a_link(tmp_path):
    data = tmp_path / "prompt.txt"
    data.write_text("my prompt")
    link = tmp_path / "link.txt"
    link.symlink_to(data)
    hard = tmp_path / "hard.txt"
    os.link(data, hard)
    for out in (data, link, hard):
        with pytest.raises(InputError, match="is the same file as `prompt_file`"):
            check_output(out, inputs=[("`prompt_file`", data), ("`answer_file`", None)], force=True)
    assert data.read_text() == "my prompt"


def test_check_output_replaces_only_what_ce_inspect_wrote(tmp_path):
    ours, line, empty, foreign = (tmp_path / n for n in ("r.json", "o.jsonl", "e.json", "notes.txt"))
    ours.write_text(DOC)
    line.write_text('{"schema_version": 1, "id": null, "line": 1}\n')
    empty.write_bytes(b"")
    foreign.write_text('{"model": "m"}')  # JSON, but not a document of ours: schema_version is not first
    for path in (ours, line, empty):
        assert is_ours(path) and check_output(path).ours
    with pytest.raises(InputError, match="exists and was not written by ce-inspect .* pass `force`"):
        check_output(foreign)
    assert check_output(foreign, force=True).exists


def test_check_output_lets_devices_through(tmp_path):
    target = check_output("/dev/null", inputs=[("`prompt_file`", "/dev/null")])
    assert target.exists and not target.regular


# --- write_output ----------------------------------------------------------------------------------------


def test_new_file_gets_the_umask_mode(tmp_path, umask):
    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o077, 0o600)):
        umask(mask)
        out = tmp_path / f"out{mask:o}.json"
        write_output(out, DOC)
        assert stat.S_IMODE(out.stat().st_mode) == mode
        assert out.read_text() == DOC


def test_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    out = tmp_path / "out.json"
    out.write_text("old")
    out.chmod(0o664)
    write_output(out, DOC)
    assert out.read_text() == DOC and stat.S_IMODE(out.stat().st_mode) == 0o664


def test_a_link_is_written_through_and_stays_a_link(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    write_output(link, DOC)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == DOC
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "later.json")
    write_output(dangling, DOC)
    assert dangling.is_symlink() and (tmp_path / "later.json").read_text() == DOC


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    out.write_text("old result")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(InputError, match="out.json: cannot write it"):
        write_output(out, DOC)
    assert out.read_text() == "old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_dev_null_stays_a_character_device():
    write_output("/dev/null", DOC)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_dev_full_is_a_one_line_error():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(InputError, match="/dev/full: cannot write it"):
        write_output("/dev/full", DOC)


def test_a_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, DOC * 5000)  # more than a pipe holds: the reader must drain it
    reader.join(timeout=PROCESS_TIMEOUT)
    assert not reader.is_alive(), f"the FIFO's reader got no end of file in {PROCESS_TIMEOUT:.0f} s"
    assert received == [(DOC * 5000).encode()]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --- output_lock -----------------------------------------------------------------------------------------


def test_a_second_lock_on_one_output_is_refused_with_the_pid(tmp_path):
    out = tmp_path / "out.jsonl"
    with output_lock(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())
        with pytest.raises(InputError, match=rf"another ce-inspect run \(PID {os.getpid()}\) is writing it"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()  # removed on the way out
    with output_lock(out):  # and free again
        pass


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out.jsonl"
    lock_path(out).write_text("999999\n")  # the file stays after kill -9; its flock went with the process
    with output_lock(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())


def test_lock_path_follows_links(tmp_path):
    (tmp_path / "d").mkdir()
    real = tmp_path / "d" / "out.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert lock_path(link) == Path(os.path.realpath(tmp_path / "d")) / ".out.jsonl.lock"


def test_a_command_with_another_format_names_its_own_mark(tmp_path):
    import re

    report = tmp_path / "report.html"
    report.write_text("<!-- ce-inspect report -->\n<html></html>\n")
    mark = re.compile(rb"<!-- ce-inspect report")
    assert check_output(report, marks=[mark]).ours
    with pytest.raises(InputError, match="was not written by ce-inspect"):
        check_output(report)  # not one of the JSON documents
