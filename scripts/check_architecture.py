"""Measure the architecture of ce_inspect/ against a ratchet baseline (issue 17).

    python scripts/check_architecture.py                   # fail on any violation not in the baseline
    python scripts/check_architecture.py --all             # list every violation with its measure
    python scripts/check_architecture.py --write-baseline  # rewrite architecture-baseline.txt from the code

Every ``ce_inspect/**/*.py`` is parsed with ``ast`` (nothing is imported) and four rules are checked:

* ``cycle``: import cycles, i.e. strongly connected components of more than one module in the graph of
  runtime imports between ce_inspect modules. Imports at any depth count: module level and inside
  functions and methods alike (an import inside a function still runs, only later). Imports under
  ``if TYPE_CHECKING:`` never run and are left out of the graph. Relative imports are resolved;
  ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Importing
  ``pkg.mod`` also runs ``pkg/__init__``; that implicit edge is not drawn (every package that imports its
  own submodules would be a cycle).
* ``private``: a private name (one leading underscore, not a dunder) of one ce_inspect module used by
  another, as ``from ce_inspect.x import _name`` (or any relative form, TYPE_CHECKING ones included) or
  as ``mod._name`` where ``mod`` is a name the importing module binds to a ce_inspect module.
* ``function``: a function or method body over ``MAX_FUNCTION_LINES`` lines, counted from its first
  statement (a docstring excluded) to its last line; nested functions and methods each count too.
* ``module``: a module over ``MAX_MODULE_LINES`` physical lines.

Each violation has a stable key, one per line (``cycle ce_inspect.a ce_inspect.b``, ``private
ce_inspect.a -> ce_inspect.b._name``, ``function ce_inspect.cli.diff:diff``, ``module
ce_inspect.dataset.batch``). The baseline file lists the known ones: the redesign of issue 17 removes them, and
any new one fails ``make lint``. Baseline lines that no longer occur are printed (without failing) so
they can be deleted.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ce_inspect"
BASELINE = ROOT / "architecture-baseline.txt"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 700

BASELINE_HEADER = """\
# Architecture ratchet for issue 17 (scripts/check_architecture.py, run by `make lint`).
# Every line below is a known violation of the architecture rules (import cycle, private name used across
# modules, function body over 60 lines, module over 700 lines) that the redesign of issue 17 removes.
# A violation not listed here fails `make lint`; when one is fixed, delete its line (the check prints
# which lines no longer occur). Regenerate with `python scripts/check_architecture.py --write-baseline`
# only to record fixes, never to admit new violations.
"""


@dataclass(frozen=True)
class ImportEdge:
    """One import of a ce_inspect module by another, where it is in the source."""

    source: str
    target: str
    line: int
    in_function: bool
    type_checking: bool


@dataclass(frozen=True)
class Violation:
    """A broken rule: its stable ``key`` (what the baseline lists) and a ``measure`` for humans."""

    key: str
    measure: str


@dataclass
class ModuleInfo:
    """A parsed module of the package."""

    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int


@dataclass
class Analysis:
    """Everything measured over one package."""

    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    edges: list[ImportEdge] = field(default_factory=list)
    cycles: list[Violation] = field(default_factory=list)
    private: list[Violation] = field(default_factory=list)
    functions: list[Violation] = field(default_factory=list)
    long_modules: list[Violation] = field(default_factory=list)

    @property
    def violations(self) -> list[Violation]:
        """Every violation, rule by rule, each rule's sorted by key."""
        return [*self.cycles, *self.private, *self.functions, *self.long_modules]

    @property
    def imports_in_functions(self) -> int:
        """How many import statements of package modules sit inside a function or method (runtime ones)."""
        return len({(e.source, e.line) for e in self.edges if e.in_function and not e.type_checking})

    def summary(self) -> str:
        """One line with the counts of each rule."""
        return (
            f"{len(self.cycles)} cycles, {len(self.private)} private imports, {len(self.functions)} long functions, "
            f"{len(self.long_modules)} long modules, {self.imports_in_functions} imports inside functions "
            "(TYPE_CHECKING imports are left out of the cycle graph)"
        )


def is_private(name: str) -> bool:
    """``_x`` is private; ``__x__`` (a dunder) and ``x`` are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def discover(package_root: Path) -> dict[str, ModuleInfo]:
    """Parse every ``.py`` file under ``package_root``; keys are dotted names rooted at the folder's name."""
    package_root = package_root.resolve()
    modules: dict[str, ModuleInfo] = {}
    for path in sorted(package_root.rglob("*.py")):
        parts = list(path.relative_to(package_root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join([package_root.name, *parts])
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        modules[name] = ModuleInfo(name, path, is_package, tree, len(text.splitlines()))
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement with (in a function, under TYPE_CHECKING), at any depth."""
    stack: list[tuple[ast.AST, bool, bool]] = [(tree, False, False)]
    while stack:
        node, in_function, type_checking = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function, type_checking
            continue
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend((child, in_function, True) for child in node.body)
            stack.extend((child, in_function, type_checking) for child in node.orelse)
            continue
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner, type_checking) for child in ast.iter_child_nodes(node))


def resolve_base(module: ModuleInfo, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()
    drop = node.level - 1
    if drop:
        parts = parts[:-drop] if drop < len(parts) else []
    return ".".join([*parts, node.module] if node.module else parts)


def nearest_module(name: str, modules: dict[str, ModuleInfo]) -> str | None:
    """``name`` if it is a module of the package, else its closest enclosing one (None outside)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


@dataclass(frozen=True)
class ImportedName:
    """One name an import statement brings in from the package."""

    target: str  # the package module the import runs (the edge goes to it)
    owner: str | None  # `from owner import name`: the module the name is taken from
    name: str | None
    bound: tuple[str, str] | None  # (local name, package module) when the import binds a name to a module


def imported_names(
    module: ModuleInfo, node: ast.Import | ast.ImportFrom, modules: dict[str, ModuleInfo]
) -> list[ImportedName]:
    """What ``node`` imports from the package (imports of other packages are dropped)."""
    found: list[ImportedName] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = nearest_module(alias.name, modules)
            if target is None:
                continue
            top = alias.name.split(".")[0]  # `import a.b` binds `a`; `import a.b as m` binds m to a.b
            bound = (alias.asname, target) if alias.asname else (top, top) if top in modules else None
            found.append(ImportedName(target, None, None, bound))
        return found
    base = resolve_base(module, node)
    base_module = nearest_module(base, modules) if base else None
    if base_module is None:
        return found
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if alias.name != "*" and submodule in modules:
            found.append(ImportedName(submodule, base_module, alias.name, (alias.asname or alias.name, submodule)))
        else:
            found.append(ImportedName(base_module, base_module, alias.name, None))
    return found


def module_bindings(module: ModuleInfo, modules: dict[str, ModuleInfo]) -> dict[str, str]:
    """Local names the module binds to package modules by import, anywhere in the file (scopes merged)."""
    bindings: dict[str, str] = {}
    for node, _, _ in walk_imports(module.tree):
        for imported in imported_names(module, node, modules):
            if imported.bound is not None:
                bindings[imported.bound[0]] = imported.bound[1]
    return bindings


def dotted_module(node: ast.expr, bindings: dict[str, str], modules: dict[str, ModuleInfo]) -> str | None:
    """The package module an expression like ``m`` or ``ce_inspect.cli`` denotes, if any."""
    if isinstance(node, ast.Name):
        return bindings.get(node.id)
    if isinstance(node, ast.Attribute):
        parent = dotted_module(node.value, bindings, modules)
        if parent is not None and f"{parent}.{node.attr}" in modules:
            return f"{parent}.{node.attr}"
    return None


def collect_imports(analysis: Analysis) -> None:
    """Fill ``analysis.edges`` and ``analysis.private`` from every module's imports and attribute uses."""
    modules = analysis.modules
    private: dict[str, str] = {}
    for module in modules.values():
        for node, in_function, type_checking in walk_imports(module.tree):
            for imported in imported_names(module, node, modules):
                if imported.target != module.name:
                    analysis.edges.append(
                        ImportEdge(module.name, imported.target, node.lineno, in_function, type_checking)
                    )
                if imported.owner is not None and imported.name is not None and imported.owner != module.name:
                    if is_private(imported.name):
                        key = f"private {module.name} -> {imported.owner}.{imported.name}"
                        private.setdefault(key, f"{module.path.name}:{node.lineno}: from-import")
        bindings = module_bindings(module, modules)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = dotted_module(node.value, bindings, modules)
                if owner is not None and owner != module.name:
                    key = f"private {module.name} -> {owner}.{node.attr}"
                    private.setdefault(key, f"{module.path.name}:{node.lineno}: attribute")
    analysis.private = [Violation(k, private[k]) for k in sorted(private)]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycle_path(graph: dict[str, set[str]], members: Sequence[str]) -> list[str]:
    """A shortest cycle through the first member, staying inside the component (breadth first)."""
    inside = set(members)
    start = members[0]
    previous: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]


def find_cycles(analysis: Analysis) -> None:
    """Fill ``analysis.cycles`` from the runtime (non-TYPE_CHECKING) edges."""
    graph: dict[str, set[str]] = {name: set() for name in analysis.modules}
    for edge in analysis.edges:
        if not edge.type_checking:
            graph[edge.source].add(edge.target)
    cycles = []
    for members in strongly_connected(graph):
        if len(members) > 1:
            cycles.append(Violation(f"cycle {' '.join(members)}", " -> ".join(cycle_path(graph, members))))
    analysis.cycles = sorted(cycles, key=lambda v: v.key)


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement of the body (a docstring excluded) to the function's last line."""
    body = node.body
    if ast.get_docstring(node, clean=False) is not None:
        body = body[1:]
    if not body or node.end_lineno is None:
        return 0
    return node.end_lineno - body[0].lineno + 1


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (``Class.method``, ``outer.inner``)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = f"{prefix}{child.name}"
            yield qualname, child
            yield from functions(child, f"{qualname}.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def find_long_code(analysis: Analysis, max_function: int, max_module: int) -> None:
    """Fill ``analysis.functions`` and ``analysis.long_modules``."""
    longest: dict[str, int] = {}
    for module in analysis.modules.values():
        for qualname, node in functions(module.tree):
            key = f"function {module.name}:{qualname}"  # a name defined twice keeps its longest body
            longest[key] = max(longest.get(key, 0), body_lines(node))
        if module.lines > max_module:
            analysis.long_modules.append(Violation(f"module {module.name}", f"{module.lines} lines"))
    analysis.functions = [Violation(k, f"{n} lines") for k, n in sorted(longest.items()) if n > max_function]
    analysis.long_modules.sort(key=lambda v: v.key)


def analyze(
    package_root: Path, *, max_function: int = MAX_FUNCTION_LINES, max_module: int = MAX_MODULE_LINES
) -> Analysis:
    """Measure the package whose folder is ``package_root`` (its name is the folder's name)."""
    analysis = Analysis(modules=discover(package_root))
    collect_imports(analysis)
    find_cycles(analysis)
    find_long_code(analysis, max_function, max_module)
    return analysis


def read_baseline(path: Path) -> list[str]:
    """The keys a baseline lists (blank lines and ``#`` comments skipped); none if there is no file."""
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def write_baseline(path: Path, violations: Iterable[Violation]) -> None:
    """Write every violation's key under the explanatory header."""
    keys = "".join(f"{v.key}\n" for v in violations)
    path.write_text(BASELINE_HEADER + "\n" + keys, encoding="utf-8")


def compare(violations: Sequence[Violation], baseline: Iterable[str]) -> tuple[list[Violation], list[str]]:
    """(violations not in the baseline, baseline keys that no longer occur)."""
    known = set(baseline)
    current = {v.key for v in violations}
    new = [v for v in violations if v.key not in known]
    fixed = sorted(known - current)
    return new, fixed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (1 when a violation is not in the baseline)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="list every violation with its measure")
    parser.add_argument("--write-baseline", action="store_true", help="rewrite the baseline from the code")
    parser.add_argument("--package", type=Path, default=PACKAGE, help="the package folder (default ce_inspect/)")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="default architecture-baseline.txt")
    args = parser.parse_args(argv)

    analysis = analyze(args.package)
    violations = analysis.violations
    if args.write_baseline:
        write_baseline(args.baseline, violations)
        print(f"wrote {len(violations)} violations to {args.baseline}")
        print(analysis.summary())
        return 0
    if args.all:
        for v in violations:
            print(f"{v.key}  ({v.measure})")
    new, fixed = compare(violations, read_baseline(args.baseline))
    for key in fixed:
        print(f"fixed, delete from {args.baseline.name}: {key}")
    for v in new:
        print(f"NEW: {v.key}  ({v.measure})", file=sys.stderr)
    print(analysis.summary())
    if new:
        print(
            f"{len(new)} violations not in {args.baseline.name}: fix them (issue 17), do not add them to the baseline",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
