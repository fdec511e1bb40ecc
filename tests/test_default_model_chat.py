"""The bundled SmolLM2-135M-Instruct with its own chat template (ChatML with a default system prompt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ce_inspect import Layout, ScoreOptions, score, score_messages

pytestmark = pytest.mark.default_model


def own_loss(lm, ids, labels) -> float:
    with torch.no_grad():
        return float(lm.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)


def test_smollm2_chat_scores_the_answer_and_im_end(smollm2):
    tok = smollm2.tokenizer
    prompt, answer = "What is the capital of France?", "The capital of France is Paris."
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    result = score(smollm2, prompt, answer, layout=Layout(chat=True), options=ScoreOptions(top_k=5))

    full = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    start = len(tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"])
    want = list(tok(answer, add_special_tokens=False)["input_ids"]) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert [t.token_id for t in result.tokens] == want
    assert [t.index for t in result.tokens] == list(range(start, start + len(want)))
    assert result.tokens[-1].token == "<|im_end|>" and result.tokens[-1].segment == "eot"
    labels = [-100] * len(full)
    labels[start : start + len(want)] = want
    assert result.summary.mean == pytest.approx(own_loss(smollm2, full, labels), abs=1e-5)
    assert (
        result.layout["default_system_prompt"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert all(len(t.top_k) == 5 for t in result.tokens)


def test_smollm2_sample_conversation(smollm2):
    sample = Path(__file__).resolve().parents[1] / "samples" / "chat.json"
    messages = json.loads(sample.read_text())
    result = score_messages(smollm2, messages, options=ScoreOptions(verify=True))
    assert result.summary.verify_abs_diff < 1e-5
    assert [t.turn for t in result.turns] == [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert not [s for s in result.sequence if s.scored and s.segment not in ("assistant", "eot")]
    for turn in result.turns:
        content = "".join(t.token for t in result.tokens if t.turn == turn.turn and t.segment == "assistant")
        assert content == messages[turn.turn]["content"]
