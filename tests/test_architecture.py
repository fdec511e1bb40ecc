"""scripts/check_architecture.py: each rule fails on a tiny synthetic package, and the real package passes
against its committed baseline (issue 17's ratchet). Pure ``ast``: no torch, no import of the package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("check_architecture", ROOT / "scripts" / "check_architecture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


arch = _load_script()


def make_package(tmp_path: Path, files: dict[str, str], name: str = "pkg") -> Path:
    root = tmp_path / name
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def keys(violations) -> list[str]:
    return [v.key for v in violations]


def test_a_cycle_made_only_by_an_import_inside_a_function_is_found(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": "from . import b\n",
            "b.py": "from .c import thing\n",
            "c.py": "def thing():\n    from .a import x\n    return x\n",
            "d.py": "from . import a\n",
        },
    )
    analysis = arch.analyze(root)
    assert keys(analysis.cycles) == ["cycle pkg.a pkg.b pkg.c"]
    assert analysis.cycles[0].measure == "pkg.a -> pkg.b -> pkg.c -> pkg.a"
    assert analysis.imports_in_functions == 1


def test_a_cycle_only_under_type_checking_is_not_one(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": "from . import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
            "c.py": "import typing\nfrom . import d\n",
            "d.py": "import typing\nif typing.TYPE_CHECKING:\n    from . import c\nelse:\n    pass\n",
        },
    )
    analysis = arch.analyze(root)
    assert analysis.cycles == []
    assert {(e.source, e.target) for e in analysis.edges if e.type_checking} == {("pkg.b", "pkg.a"), ("pkg.d", "pkg.c")}


def test_the_else_branch_of_type_checking_runs(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": "from . import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    from . import a\n",
        },
    )
    assert keys(arch.analyze(root).cycles) == ["cycle pkg.a pkg.b"]


@pytest.mark.parametrize(
    "importer",
    [
        "from .sub import mod\n",  # `from package import submodule` is an edge to the submodule
        "from .sub.mod import f\n",
        "from pkg.sub import mod\n",
        "import pkg.sub.mod\n",
        "import pkg.sub.mod as m\n",
    ],
)
def test_relative_and_absolute_imports_resolve_to_the_submodule(tmp_path, importer):
    root = make_package(
        tmp_path,
        {"a.py": importer, "sub/__init__.py": "", "sub/mod.py": "def f():\n    from .. import a\n"},
    )
    assert keys(arch.analyze(root).cycles) == ["cycle pkg.a pkg.sub.mod"]


def test_private_names_across_modules_are_found_and_dunders_are_not(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": "_x = 1\n__version__ = '1'\ndef _own():\n    return _x\n",
            "b.py": "from .a import _x, __version__\n",
            "c.py": "from . import a\nprint(a._x, a.__doc__)\n",
            "d.py": "import pkg.a\nprint(pkg.a._y)\n",
            "e.py": "import pkg.a as alias\ndef f():\n    return alias._z\n",
            "sub/__init__.py": "",
            "sub/s.py": "def f():\n    from ..a import _w\n    return _w\n",
            "f.py": "class C:\n    _p = 1\nprint(C._p)\nimport os\nprint(os._exit)\n",
        },
    )
    assert keys(arch.analyze(root).private) == [
        "private pkg.b -> pkg.a._x",
        "private pkg.c -> pkg.a._x",
        "private pkg.d -> pkg.a._y",
        "private pkg.e -> pkg.a._z",
        "private pkg.sub.s -> pkg.a._w",
    ]


def function_source(name: str, body_lines: int, docstring: bool = True) -> str:
    doc = '    """A docstring\n    over two lines (not counted)."""\n' if docstring else ""
    return f"def {name}():\n{doc}" + "    x = 1\n" * (body_lines - 1) + "    return x\n"


def test_a_61_line_body_is_flagged_and_a_60_line_one_is_not(tmp_path):
    method = "class K:\n" + "".join(f"    {line}\n" for line in function_source("method", 61).splitlines())
    nested = "def outer():\n" + "".join(f"    {line}\n" for line in function_source("inner", 61).splitlines())
    root = make_package(
        tmp_path,
        {
            "a.py": function_source("long", 61) + function_source("ok", 60) + function_source("bare", 60, False),
            "b.py": method + nested,
        },
    )
    analysis = arch.analyze(root)
    assert keys(analysis.functions) == [
        "function pkg.a:long",
        "function pkg.b:K.method",
        "function pkg.b:outer",  # the whole nested function is its body
        "function pkg.b:outer.inner",
    ]
    assert analysis.functions[0].measure == "61 lines"


def test_a_701_line_module_is_flagged_and_a_700_line_one_is_not(tmp_path):
    root = make_package(tmp_path, {"big.py": "x = 1\n" * 701, "ok.py": "x = 1\n" * 700})
    analysis = arch.analyze(root)
    assert [(v.key, v.measure) for v in analysis.long_modules] == [("module pkg.big", "701 lines")]


def test_the_baseline_fails_a_new_violation_and_reports_a_fixed_one(tmp_path, capsys):
    root = make_package(tmp_path, {"big.py": "x = 1\n" * 701, "a.py": "from .b import _x\n", "b.py": "_x = 1\n"})
    baseline = tmp_path / "baseline.txt"

    assert arch.main(["--package", str(root), "--baseline", str(baseline), "--write-baseline"]) == 0
    assert arch.read_baseline(baseline) == ["private pkg.a -> pkg.b._x", "module pkg.big"]
    assert baseline.read_text().startswith("# Architecture ratchet for issue 17")
    assert arch.main(["--package", str(root), "--baseline", str(baseline)]) == 0

    (root / "big.py").write_text("x = 1\n")  # fixed: reported, not a failure
    (root / "c.py").write_text("from .b import _x\n")  # new: a failure
    capsys.readouterr()
    assert arch.main(["--package", str(root), "--baseline", str(baseline)]) == 1
    out, err = capsys.readouterr()
    assert "fixed, delete from baseline.txt: module pkg.big" in out
    assert "NEW: private pkg.c -> pkg.b._x" in err
    assert "private pkg.a" not in err
    assert "0 cycles, 2 private imports, 0 long functions, 0 long modules, 0 imports inside functions" in out


def test_the_package_passes_against_its_committed_baseline():
    analysis = arch.analyze(arch.PACKAGE)
    new, _ = arch.compare(analysis.violations, arch.read_baseline(arch.BASELINE))
    assert [v.key for v in new] == [], "violations not in architecture-baseline.txt (issue 17)"
