"""Run the same commands from two checkouts of ce-inspect and compare their JSON outputs key for key.

    python scripts/compare_outputs.py OLD_CHECKOUT NEW_CHECKOUT [NAME...]

Each checkout's ``ce_inspect`` is imported through ``PYTHONPATH`` (one venv serves both); every command runs in
a fresh folder of its own with the same relative output names and the same absolute input paths (the new
checkout's samples), on the bundled SmolLM2 (``diff`` compares it with itself in bfloat16). What differs
between two runs of one checkout is left out: wall-clock figures (``seconds``, ``tokens_per_second``) and
the temporary folder's name. Prints one line per output and exits 1 if any differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Keys whose values are wall-clock measurements: they differ between any two runs.
VOLATILE = {"seconds", "tokens_per_second"}


def commands(samples: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, the JSON files it writes besides stdout)."""
    pairs, audit = str(samples / "pairs.jsonl"), samples / "audit"
    capital = ["--prompt-file", str(samples / "capital" / "prompt.txt")]
    capital += ["--answer-file", str(samples / "capital" / "answer.txt")]
    return {
        "run": (["run", *capital, "--top-k", "3", "--json"], []),
        "run-chat": (["run", *capital, "--chat", "--json"], []),
        "batch": (
            ["batch", pairs, "--skip-invalid", "-o", "out.jsonl", "--summary-json", "summary.json"],
            ["out.jsonl", "summary.json"],
        ),
        "diff": (["diff", *capital, "--dtype-b", "bfloat16", "--json"], []),
        "diff-input": (
            ["diff", "--input", pairs, "--dtype-b", "bfloat16", "--skip-invalid", "-o", "out.jsonl"]
            + ["--summary-json", "summary.json"],
            ["out.jsonl", "summary.json"],
        ),
        "batch-chat": (["batch", str(samples / "chat.jsonl"), "-o", "out.jsonl"], ["out.jsonl"]),
        "batch-broken": (
            ["batch", str(samples / "broken.jsonl"), "--skip-invalid", "-o", "out.jsonl", "--summary-json", "s.json"],
            ["out.jsonl", "s.json"],
        ),
        "batch-trl": (["batch", pairs, "--tokenization", "trl", "--skip-invalid"], []),
        "batch-stdout": (["batch", pairs, "--skip-invalid", "--no-sequence", "-b", "3"], []),
        "run-messages": (["run", "--messages", str(samples / "chat.json"), "--json"], []),
        "diff-input-chat": (
            ["diff", "--input", str(samples / "chat.jsonl"), "--dtype-b", "bfloat16", "--summary-json", "s.json"],
            ["s.json"],
        ),
        **{
            f"audit-no-model-{path.stem}": (
                ["audit", str(path), "--no-model", "--json", "-o", "o.jsonl", "--skip-invalid"],
                ["o.jsonl"],
            )
            for path in sorted(audit.glob("*.jsonl"))
        },
        "audit-model-clean": (
            ["audit", str(audit / "clean.jsonl"), "--json", "-o", "o.jsonl"],
            ["o.jsonl"],
        ),
        "audit-model": (
            ["audit", str(audit / "loss-outlier.jsonl"), "--json", "-o", "o.jsonl", "--fail-on", "none"],
            ["o.jsonl"],
        ),
    }


def scrub(obj: Any, folder: str) -> Any:
    if isinstance(obj, dict):
        return {k: scrub(v, folder) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [scrub(v, folder) for v in obj]
    if isinstance(obj, str):
        return obj.replace(folder, "<run>")
    return obj


def documents(text: str) -> list[Any]:
    """A file of one JSON document, or of JSON lines."""
    text = text.strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines()]
    except json.JSONDecodeError:
        return ["<a human report: its figures include timings, so it is not compared>"]


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two documents first differ (a JSON path), or None."""
    if type(a) is not type(b):
        return f"{path or '/'}: {type(a).__name__} / {type(b).__name__}"
    if isinstance(a, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{path}/{key}: only in the {'new' if key not in a else 'old'} output"
            found = first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} / {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {str(a)[:200]!r} / {str(b)[:200]!r}"


def run(checkout: Path, args: list[str], files: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        done = subprocess.run(
            [sys.executable, "-m", "ce_inspect", *args], cwd=folder, env=env, capture_output=True, text=True
        )
        out = {"exit": done.returncode, "stdout": scrub(documents(done.stdout), folder)}
        for name in files:
            path = Path(folder) / name
            out[name] = scrub(documents(path.read_text()), folder) if path.exists() else "<not written>"
        return out


def main(argv: list[str]) -> int:
    old, new = (Path(a).resolve() for a in argv[1:3])
    differ = 0
    only = argv[3:]  # names of the commands to run (default: all)
    for name, (args, files) in commands(new / "samples").items():
        if only and name not in only:
            continue
        a, b = run(old, args, files), run(new, args, files)
        same = a == b
        differ += not same
        sizes = ", ".join(f"{k}: {len(v)} doc(s)" for k, v in b.items() if isinstance(v, list))
        print(f"{'same' if same else 'DIFFERENT'}  {name}  (exit {b['exit']}; {sizes})", flush=True)
        if not same:
            for key in a:
                if a[key] != b.get(key):
                    print(f"    {key} differs at {first_difference(a[key], b.get(key))}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
