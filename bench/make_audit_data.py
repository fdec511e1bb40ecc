"""Write a large pre-tokenized JSONL data set for measuring `audit`'s memory and speed (not committed).

    python bench/make_audit_data.py 100000 /tmp/audit-100k.jsonl [--messages]

Records are SmolLM2-tokenized conversations with the labels ce-inspect's reference layout gives (every
assistant turn and its <|im_end|>); one in 50 has its end-of-turn label removed, so the audit has failing
records to list. ``--messages`` keeps each record's conversation next to its tokens, which makes the audit
also compare the labels with the chat template (much slower per record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ce_inspect.model import load_tokenizer  # noqa: E402
from ce_inspect.text import Layout, encode_messages  # noqa: E402

WORDS = "the a cat dog sat on mat sun moon river stone tree house blue red green quick slow".split()


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    with_messages = "--messages" in sys.argv
    tok, _ = load_tokenizer()
    base = []
    for k in range(20):  # a few real encodings, reused with varied content
        user = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(5 + k % 7))
        answer = " ".join(WORDS[(3 * k + j) % len(WORDS)] for j in range(8 + k % 11))
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        base.append((msgs, encode_messages(tok, msgs, Layout())))
    with open(out, "w", encoding="utf-8") as fh:
        for i in range(n):
            msgs, enc = base[i % len(base)]
            labels = list(enc.labels)
            if i % 50 == 7:
                labels[[p for p, s in enumerate(enc.segments) if s == "eot"][0]] = -100
            row = {"id": i, "input_ids": list(enc.input_ids), "labels": labels}
            if with_messages:
                row["messages"] = msgs
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
