"""The command line's frame: the error table, --version, the command registry and the examples in --help."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import PROCESS_TIMEOUT

from ce_inspect.cli import audit as cli_audit
from ce_inspect.cli import main
from ce_inspect.cli.app import COMMANDS, app
from ce_inspect.cli.errors import FLAGS, Reported, cli_message, report
from ce_inspect.cli.options import Common
from ce_inspect.dataset import BatchSettings
from ce_inspect.errors import CeInspectError, InputError, ModelNotFoundError
from ce_inspect.scoring import REDUCTIONS, ScoreOptions

ROOT = Path(__file__).resolve().parents[1]


# --- the error table ------------------------------------------------------------------------------------


def test_library_errors_show_flags_for_parameters():
    got = report(InputError("`system` needs `chat`; `colour` and `top_k` stay"))
    assert got == Reported("--system needs --chat; `colour` and --top-k stay", 1)
    assert report(ModelNotFoundError("./m: no such folder")) == Reported("./m: no such folder", 1)


def test_usage_errors_keep_their_exit_code_and_point_to_help():
    got = report(typer.BadParameter("use right or left", param_hint="--padding-side"))
    assert got == Reported("Invalid value for --padding-side: use right or left (see `ce-inspect --help`)", 2)
    got = report(typer.BadParameter("unknown `reduction` 'avg'"))
    assert got is not None and got.message.startswith("Invalid value: unknown --reduction 'avg'")


def test_interrupts_and_aborts_and_bugs():
    assert report(KeyboardInterrupt()) == Reported("interrupted", 130)
    assert report(typer.Abort()) == Reported("aborted (end of input)", 1)
    assert report(ValueError("a bug")) is None  # unknown: main lets its traceback through
    assert report(SystemExit(0)) is None


def _raise_from_cause(*args, **kwargs):
    try:
        raise OSError("the underlying cause")
    except OSError as exc:
        raise InputError("`model` could not be read") from exc


@pytest.mark.parametrize("debug", ["", "1"])
def test_debug_shows_the_cause(monkeypatch, capsys, debug):
    monkeypatch.setenv("CE_INSPECT_DEBUG", debug)
    monkeypatch.setattr(Common, "load", _raise_from_cause)
    assert main(["run", "-p", "x", "-a", "y"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == "Error: --model could not be read"
    assert ("Traceback" in err and "the underlying cause" in err) == bool(debug)


def test_an_unknown_exception_keeps_its_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Common, "load", bug)
    with pytest.raises(ZeroDivisionError):
        main(["run", "-p", "x", "-a", "y"])


def _messages(make) -> list[str]:
    out = []
    for kwargs in make:
        with pytest.raises(CeInspectError) as info:
            kwargs()
        out.append(str(info.value))
    return out


def test_option_errors_name_parameters_and_every_one_has_a_flag():
    messages = _messages(
        [
            lambda: ScoreOptions(reduction="avg"),
            lambda: ScoreOptions(label_smoothing=2.0),
            lambda: ScoreOptions(top_k=-1),
            lambda: ScoreOptions(chunk_tokens=0),
            lambda: BatchSettings(max_padding=1.5),
            lambda: BatchSettings(batch_size=0),
            lambda: BatchSettings(max_tokens=0),
            lambda: BatchSettings(padding_side="top"),
            lambda: BatchSettings(sort_window=0),
            lambda: BatchSettings(worst=-1),
        ]
    )
    for message in messages:
        names = re.findall(r"`([a-z_]+)`", message)
        assert names, f"names no parameter: {message}"
        assert set(names) <= FLAGS.keys(), message
        assert "--" not in message, f"a flag in a library message: {message}"
        assert "`" not in cli_message(message)


def test_one_list_of_reductions(capsys):
    for reduction in REDUCTIONS:
        ScoreOptions(reduction=reduction)
        Common(reduction=reduction).check()
    with pytest.raises(typer.BadParameter):
        Common(reduction="avg").check()
    # cli/options.py holds no list of its own.
    assert '"sum"' not in (ROOT / "ce_inspect/cli/options.py").read_text()


# --- --version ------------------------------------------------------------------------------------------


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M)[1]


def test_version(capsys):
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"ce-inspect {_pyproject_version()}\n" and err == ""


def test_version_through_python_m_without_torch():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ce_inspect', '--version']\n"
        "try:\n    runpy.run_module('ce_inspect', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ce-inspect {_pyproject_version()}\n"


# --- the registry and the examples ----------------------------------------------------------------------


def test_every_command_is_registered_once_from_the_list():
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names == [c.target.split(":")[1] for c in COMMANDS]


def test_no_module_imports_the_app_back():
    for path in (ROOT / "ce_inspect").rglob("*.py"):
        if path.name in ("app.py", "__init__.py") and path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                assert not (node.module in ("app", "cli.app", "ce_inspect.cli.app") or "app" in names), path


class _Parsed(Exception):
    """Raised where a command would load the model: everything before it (parsing, checks) passed."""


EXAMPLES = [(c.target, line) for c in COMMANDS for line in c.examples]


@pytest.mark.parametrize(("target", "line"), EXAMPLES, ids=[line for _, line in EXAMPLES])
def test_each_example_is_shown_and_parses(monkeypatch, capsys, target, line):
    args = shlex.split(line)
    assert args[0] == "ce-inspect"
    assert main([args[1], "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert " ".join(f"$ {line}".split()) in shown
    monkeypatch.chdir(ROOT)  # the examples use the repository's samples
    monkeypatch.setattr(Common, "load", lambda *a, **k: (_ for _ in ()).throw(_Parsed()))
    # `audit --no-model` loads only a tokenizer: parsing reached it just the same.
    monkeypatch.setattr(cli_audit, "load_tokenizer", lambda *a, **k: (_ for _ in ()).throw(_Parsed()))
    with pytest.raises(_Parsed):
        main(args[1:])


# --- habits: -h, a bare call, flags without a type (issue 20) -------------------------------------------


@pytest.mark.parametrize("command", [[], *([c.target.split(":")[1]] for c in COMMANDS)])
def test_h_is_help_on_the_app_and_every_command(capsys, command):
    assert main([*command, "--help"]) == 0
    long = capsys.readouterr().out
    assert main([*command, "-h"]) == 0
    out, err = capsys.readouterr()
    assert out == long and "Usage: ce-inspect" in out and err == ""


def test_a_bare_call_prints_the_help_and_no_empty_error(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert "Usage: ce-inspect" in out and "Commands" in out
    assert err == ""  # no "Error:  (see ...)" line with an empty message


@pytest.mark.parametrize("command", [[], *([c.target.split(":")[1]] for c in COMMANDS)])
def test_help_shows_no_type_beside_a_flag(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    if command == ["batch"]:  # options that take a value keep theirs
        assert re.search(r"--split\s+<str>", out) and re.search(r"--force\s+Replace", out)


# --- shell completion (issue 20) ----------------------------------------------------------------------------


def test_help_offers_shell_completion(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--install-completion" in out and "--show-completion" in out


def test_show_completion_prints_the_bash_script(capsys, monkeypatch):
    # The shell given, not detected: Typer then reads `bash` as the option's value (no terminal, no parent shell).
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    with pytest.raises(SystemExit) as stop:
        main(["--show-completion", "bash"])
    out, err = capsys.readouterr()
    assert stop.value.code == 0 and err == ""
    assert "_ce_inspect_completion()" in out and "_CE_INSPECT_COMPLETE=complete_bash" in out
    assert "complete -o default -F _ce_inspect_completion ce-inspect" in out


@pytest.mark.parametrize(
    "words, cword, expected", [("ce-inspect ba", 1, "batch"), ("ce-inspect batch --ski", 2, "--skip-invalid")]
)
def test_the_completion_script_completes_commands_and_options(capsys, monkeypatch, words, cword, expected):
    """What the script asks ce-inspect when Tab is pressed: the command or option that starts so."""
    monkeypatch.setenv("_CE_INSPECT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    with pytest.raises(SystemExit):
        main([])
    assert capsys.readouterr().out.split() == [expected]
