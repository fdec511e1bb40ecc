"""Write the audit samples: one small data set per check with exactly that defect, and a clean one.

    python samples/audit/make_samples.py        # rewrites samples/audit/*.jsonl

Pre-tokenized records are made with the bundled SmolLM2 tokenizer and its chat template, the labels as
ce-inspect's reference layout trains them (every assistant turn and its <|im_end|>), then broken on
purpose in the records named ``bad-*``. Each file then shows its finding in one command:

    ce-inspect audit samples/audit/eot-not-trained.jsonl --no-model
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ce_inspect.encoding import Layout, encode_messages  # noqa: E402
from ce_inspect.loading import load_tokenizer  # noqa: E402

IGNORE = -100
CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("Translate 'bonjour' to English.", "'Bonjour' means 'hello'."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun."),
    ("Give a synonym of 'quick'.", "'Fast' is a synonym of 'quick'."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is the opposite of 'hot'?", "The opposite of 'hot' is 'cold'."),
    ("What do bees make?", "Bees make honey."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]


def messages(k: int) -> list[dict[str, str]]:
    user, assistant = CONVERSATIONS[k % len(CONVERSATIONS)]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def tokenized(tok, k: int, rid: str) -> dict:
    """A correct pre-tokenized record (with the messages it came from) and its encoding."""
    msgs = messages(k)
    enc = encode_messages(tok, msgs, Layout())
    return {"id": rid, "messages": msgs, "input_ids": list(enc.input_ids), "labels": list(enc.labels)}, enc


def clean(tok) -> list[dict]:
    rows = [tokenized(tok, k, f"tok-{k}")[0] for k in range(3)]
    rows += [{"id": f"chat-{k}", "messages": messages(k)} for k in range(3, 5)]
    rows += [
        {"id": "pair-0", "prompt": "Question: what is the capital of Italy?\nAnswer:", "completion": " Rome."},
        {"id": "pair-1", "prompt": "Complete: the sky is", "completion": " blue."},
    ]
    return rows


def broken(tok, name: str, bad: set[int], breaker) -> list[dict]:
    rows = []
    for k in range(5):
        row, enc = tokenized(tok, k, f"ok-{k}")
        if k in bad:
            row["id"] = f"bad-{k}"
            breaker(row, enc)
        rows.append(row)
    return rows


def untrain_eot(row, enc) -> None:
    for p, seg in enumerate(enc.segments):
        if seg == "eot":
            row["labels"][p] = IGNORE


def train_header(row, enc) -> None:
    first = min(enc.scored_positions)
    for p in range(first - 3, first):  # "<|im_start|>assistant\n" trained too
        row["labels"][p] = row["input_ids"][p]


def train_everything(row, enc) -> None:
    row["labels"] = [IGNORE] + row["input_ids"][1:]


def late_start(row, enc) -> None:
    row["labels"][min(enc.scored_positions)] = IGNORE  # the mask starts one token late


def nothing_trained(row, enc) -> None:
    row["labels"] = [IGNORE] * len(row["labels"])


def double_bos(row, enc) -> None:
    row["input_ids"].insert(0, row["input_ids"][0])
    row["labels"].insert(0, IGNORE)


def no_bos(row, enc) -> None:
    del row["input_ids"][0], row["labels"][0]


def shift(row, enc) -> None:
    ids, labels = row["input_ids"], row["labels"]
    row["labels"] = [labels[p + 1] if p + 1 < len(labels) else IGNORE for p in range(len(ids))]


def pad_trained(row, enc) -> None:
    pad = 2  # <|im_end|>: SmolLM2's pad token is its EOS
    row["input_ids"] += [pad] * 6
    row["labels"] += [pad] * 6  # the collator copied input_ids into labels, padding included


def wrong_labels(row, enc) -> None:
    for p in sorted(enc.scored_positions)[:2]:
        row["labels"][p] = row["input_ids"][p] + 1


def other_template(row, enc) -> None:
    # Tokenized without the default system prompt the template injects (another template / tokenizer).
    tok = other_template.tok
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start = len(tok(text.rsplit("<|im_start|>assistant\n", 1)[0] + "<|im_start|>assistant\n")["input_ids"])
    row["input_ids"] = ids
    row["labels"] = [t if p >= start and p < len(ids) - 1 else IGNORE for p, t in enumerate(ids)]


def boundary(tok) -> list[dict]:
    return [
        {"id": "ok-0", "prompt": "The capital of France is", "completion": " Paris."},
        {"id": "bad-1", "prompt": "The capital of France is ", "completion": "Paris."},
        {"id": "ok-2", "prompt": "Q: 2 + 2 =", "completion": " 4"},
        {"id": "bad-3", "prompt": "Paris is the capital of Fra", "completion": "nce."},
    ]


def loss_outlier(tok) -> list[dict]:
    rows = [{"id": f"ok-{k}", "messages": messages(k)} for k in range(12)]
    rows.insert(
        3,
        {
            "id": "bad-3",
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Xq7#vL9@ zR!k2%pW ^mQ8&yT3 *bN5$hJ0 ~gF4"},
            ],
        },
    )
    return rows


def main() -> None:
    tok, _ = load_tokenizer()
    other_template.tok = tok
    files = {
        "clean": clean(tok),
        "no-trained-tokens": broken(tok, "no-trained-tokens", {1, 3}, nothing_trained),
        "eot-not-trained": broken(tok, "eot-not-trained", {0, 2}, untrain_eot),
        "template-trained": broken(tok, "template-trained", {1}, train_header)
        + [dict(tokenized(tok, 5, "bad-5")[0], labels=None)],
        "answer-partly-trained": broken(tok, "answer-partly-trained", {2}, late_start),
        "bos": broken(tok, "bos", {1}, double_bos) + [dict(tokenized(tok, 5, "bad-5")[0])],
        "boundary": boundary(tok),
        "pre-shifted-labels": broken(tok, "pre-shifted-labels", {0, 4}, shift),
        "label-mismatch": broken(tok, "label-mismatch", {3}, wrong_labels),
        "padding-trained": broken(tok, "padding-trained", {1, 2}, pad_trained),
        "tokens-mismatch": broken(tok, "tokens-mismatch", {2}, other_template),
        "loss-outlier": loss_outlier(tok),
    }
    # Finish the two rows built by hand above.
    everything = files["template-trained"][-1]
    everything["labels"] = [IGNORE] + everything["input_ids"][1:]
    no_bos(files["bos"][-1], None)
    for name, rows in files.items():
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path.relative_to(HERE.parents[1])}: {len(rows)} records")


if __name__ == "__main__":
    main()
