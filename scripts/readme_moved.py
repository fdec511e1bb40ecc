"""Check that nothing of an old README was lost when it moved into the README and docs/ (issue 20).

    python scripts/readme_moved.py 6d4b574     # the README at that commit against README.md + docs/*.md now

Every paragraph, list item, table row and code line of the old README must appear in the README or a
file of docs/, up to line breaks, runs of spaces and link targets (`[Files](#files)` and
`[Files](files.md)` read the same). Headings are structure and are not compared. What was changed on
purpose is listed in CHANGED with the reason; the script prints what is missing and exits 1 if anything
is missing that CHANGED does not explain.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Old text (a substring of a unit) changed on purpose, and why.
CHANGED = {
    # Examples rewritten so that tests/test_docs_examples.py runs them in order in a temporary folder.
    "ce-inspect run --model ./my-model --prompt-file prompt.txt": "example: runs on the samples",
    "ce-inspect run --model Qwen/Qwen2.5-0.5B --revision main": "example: a runnable jq one, a marked Hub one",
    "ce-inspect run --model ./model.Q8_0.gguf": "example: the bundled GGUF's name",
    "ce-inspect batch samples/chat.jsonl --no-sequence > scores.jsonl": "example: its own output name",
    "ce-inspect batch data.jsonl --prompt-field question": "example: a data set made from the samples",
    "zcat data.jsonl.gz | ce-inspect batch -": "example: a .gz made from the samples",
    "ce-inspect audit train.jsonl --no-model": "example: on the samples",
    "ce-inspect audit train.jsonl --model ./my-model": "example: on the samples, with the bundled model",
    "ce-inspect audit samples/audit/eot-not-trained.jsonl --no-model": "example: says its exit code 3",
    "ce-inspect audit train.parquet --no-model": "example: on the samples",
    "ce-inspect choices eval.jsonl -m ./ckpt": "example: on the samples, a threshold that trips",
    "ce-inspect diff --model-b ./finetuned": "example: two stand-in model folders",
    "ce-inspect diff -m ./model --model-b ./model.Q4_K_M.gguf": "example: kept, marked not run",
    "ce-inspect diff -m ./ckpt-1000 --model-b ./ckpt-2000": "example: stand-in folders, the data set positional",
    'r = diff(lambda: load("./big-a")': "example: stand-in folders",
    "-o /tmp/diff.jsonl": "example: writes in the working folder",
    "ce-inspect prefs samples/prefs/pairs.jsonl -m ./sft-model": "example: stand-in folders",
    "--fail-on identical,no-trained-tokens   # a CI gate": "example: says its exit code 3",
    "ce-inspect batch samples/pairs.jsonl -o scores.jsonl --html report.html": "example: its own output",
    'ce-inspect run -p "Q: 2+2=" -a " 4" --markdown - | gh pr comment': "example: runs without gh",
    "torchrun --nproc-per-node 8 -m ce_inspect batch data.jsonl": "example: 2 processes; 8 GPUs marked",
    "torchrun --nnodes 2 --node-rank 0": "example: marked not run",
    "-m ce_inspect batch data.jsonl -o scores.jsonl          # and --node-rank 1": "example: marked not run",
    "accelerate launch --multi_gpu --num_processes 8": "example: marked not run",
    "accelerate launch --multi_gpu --num_processes 2 -m ce_inspect batch data.jsonl": "example: on the samples",
    # Figures re-measured (the issue found them out of date).
    "| batches of 8 (the command above) |": "re-measured",
    "| one example at a time (library `diff` per pair) |": "re-measured",
    "bfloat16 costs about 0.0012 nats of KL per token here": "re-measured",
    "**float32 against bfloat16 of the bundled SmolLM2-135M-Instruct**": "re-measured: the machine named",
    "| a bad question is one line naming its line, or skipped;": "the file named before its test",
    # Wording that named the README as the one document.
    "Each promise this README makes about trust": "the README and docs/",
    "`audit` reads the same files and formats as `batch` (above)": "a link instead of 'above'",
    "Each record is a JSON object in one of the formats below": "a link instead of 'below'",
    "write it all as a report (see below)": "a link instead of 'below'",
    '(see "Many processes";': "a link added",
    "tokenized exactly as TRL's `SFTTrainer` would (see above)": "a link instead of 'above'",
    "Pairs only (see above)": "a link instead of 'above'",
    "ce-inspect --version                   # check the install": "its own block, run by the test",
}


def normalise(text: str) -> str:
    text = re.sub(r"!?\[((?:`[^`]*`|[^\]`])*)\]\([^)\s]*\)", r"\1", text)  # a link reads as its text
    text = text.replace("<!-- CI figures -->", "")  # the lead's markers around the CI figures
    return re.sub(r"\s+", " ", text).strip()


def units(markdown: str) -> list[str]:
    """Paragraphs, list items, table rows and code lines, headings left out."""
    found, paragraph, in_code = [], [], False

    def flush() -> None:
        if paragraph:
            found.append(" ".join(paragraph))
            paragraph.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            in_code = not in_code
        elif in_code:
            if line.strip():
                found.append(line)
        elif not line.strip() or line.startswith("#"):
            flush()
        elif line.startswith("|"):
            flush()
            found.append(line)
        elif line.startswith("- "):
            flush()
            paragraph.append(line)
        else:
            paragraph.append(line)
    flush()
    return found


def main(rev: str) -> int:
    old = subprocess.run(["git", "show", f"{rev}:README.md"], cwd=ROOT, check=True, capture_output=True, text=True)
    new = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    corpus = " ".join(normalise(path.read_text()) for path in new)
    total, explained, missing = 0, [], []
    for unit in units(old.stdout):
        total += 1
        if normalise(unit) in corpus:
            continue
        reason = next((why for text, why in CHANGED.items() if text in unit), None)
        (explained if reason else missing).append((unit, reason))
    print(f"{total} units of the README at {rev}; {total - len(explained) - len(missing)} found as they were")
    for unit, reason in explained:
        print(f"  changed ({reason}): {unit[:110]}")
    for unit, _ in missing:
        print(f"  MISSING: {unit[:160]}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "HEAD"))
