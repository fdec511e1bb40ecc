"""Scoring chats, turns and alternatives, held to the model's own loss and to torch on the full logits."""

from __future__ import annotations

import math

import pytest
import torch

from ce_inspect import Layout, ScoreOptions, score, score_messages
from ce_inspect.contract import SCHEMA_VERSION

CONVERSATION = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And the cat?"},
    {"role": "assistant", "content": "The cat is in."},
    {"role": "user", "content": "Sure?"},
    {"role": "assistant", "content": "Yes"},
]


def model_loss(lm, input_ids, labels) -> float:
    with torch.no_grad():
        return float(lm.model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels])).loss)


def chat_labels(tok, messages) -> tuple[list[int], list[int]]:
    """Assistant-only SFT labels built from apply_chat_template alone: for each assistant turn, the ids
    after the generation prompt up to and including <|im_end|>."""
    full = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    labels = [-100] * len(full)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=True, return_dict=True)
        start = len(prompt["input_ids"])
        stop = full.index(end_of_turn, start)
        labels[start : stop + 1] = full[start : stop + 1]
    return full, labels


def test_chat_mean_equals_the_models_own_loss(tiny_llama):
    messages = [{"role": "user", "content": "What is the cat?"}, {"role": "assistant", "content": "the cat is in."}]
    result = score(tiny_llama, "What is the cat?", "the cat is in.", layout=Layout(chat=True))
    full, labels = chat_labels(tiny_llama.tokenizer, messages)
    assert [t.token_id for t in result.tokens] == [t for t in labels if t != -100]
    assert result.summary.mean == pytest.approx(model_loss(tiny_llama, full, labels), abs=1e-5)
    assert [s.token_id for s in result.sequence] == full


def test_multi_turn_mean_and_turns(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, options=ScoreOptions(verify=True))
    full, labels = chat_labels(tiny_llama.tokenizer, CONVERSATION)
    assert result.summary.mean == pytest.approx(model_loss(tiny_llama, full, labels), abs=1e-5)
    assert result.summary.verify_abs_diff < 1e-5
    assert [t.token_id for t in result.tokens] == [t for t in labels if t != -100]
    # No user, system or template token is scored.
    assert {t.segment for t in result.tokens} == {"assistant", "eot"}
    assert {t.turn for t in result.tokens} == {1, 3, 5}

    assert [(t.turn, t.role) for t in result.turns] == [(1, "assistant"), (3, "assistant"), (5, "assistant")]
    for turn in result.turns:
        own = [t for t in result.tokens if t.turn == turn.turn]
        assert turn.count == len(own)
        assert turn.sum == pytest.approx(math.fsum(t.loss for t in own))
        assert turn.mean == pytest.approx(turn.sum / turn.count)
        assert turn.sum_logprob == pytest.approx(sum(t.logprob for t in own))
        assert turn.greedy_hits == sum(t.rank == 1 for t in own)
        assert (turn.first_index, turn.last_index) == (own[0].index, own[-1].index)
        # Each turn's mean is the model's own loss with only that turn's labels kept.
        only = [lab if (turn.first_index <= i <= turn.last_index) else -100 for i, lab in enumerate(labels)]
        assert turn.mean == pytest.approx(model_loss(tiny_llama, full, only), abs=1e-5)
    # The overall mean is token-weighted, as training's: not the mean of the turn means.
    weighted = sum(t.mean * t.count for t in result.turns) / result.summary.count
    assert result.summary.mean == pytest.approx(weighted)
    assert result.summary.count == sum(t.count for t in result.turns)


def test_last_turn(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, last_turn=True)
    assert [t.turn for t in result.turns] == [5]
    assert [t.token for t in result.tokens] == ["Y", "e", "s", "<|im_end|>"]


def test_no_mask_prompt_chat_is_the_whole_sequence_loss(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, layout=Layout(mask_prompt=False))
    full, _ = chat_labels(tiny_llama.tokenizer, CONVERSATION)
    assert result.summary.count == len(full) - 1
    assert result.summary.mean == pytest.approx(model_loss(tiny_llama, full, full), abs=1e-5)
    # Which part is which stays visible: every message and the injected system prompt have their turn.
    roles = {(t.turn, t.role) for t in result.turns}
    assert (None, "template") in roles and (0, "user") in roles and (1, "assistant") in roles


def test_top_k_and_greedy_match_torch(tiny_llama):
    k = 5
    result = score_messages(tiny_llama, CONVERSATION, options=ScoreOptions(top_k=k))
    ids = torch.tensor([[s.token_id for s in result.sequence]])
    with torch.no_grad():
        probs = torch.softmax(tiny_llama.model(input_ids=ids).logits[0].float(), dim=-1)  # [seq, vocab]
    for t in result.tokens:
        row = probs[t.index - 1]
        top_p, top_i = row.topk(k)
        assert [a.token_id for a in t.top_k] == top_i.tolist()
        assert [a.prob for a in t.top_k] == pytest.approx(top_p.tolist(), abs=1e-5)
        assert t.is_greedy == (int(row.argmax()) == t.token_id)
        assert t.top_k[0].token_id == t.top_id
    hits = sum(int(probs[t.index - 1].argmax()) == t.token_id for t in result.tokens)
    assert result.summary.greedy_hits == hits
    assert result.summary.is_greedy == (hits == len(result.tokens))


def test_json_carries_turns_and_top_k(tiny_llama):
    result = score_messages(tiny_llama, CONVERSATION, options=ScoreOptions(top_k=3))
    d = result.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == 1
    # Existing keys are all still there.
    assert {"schema_version", "model", "device", "dtype", "layout", "tokens", "summary", "sequence", "notes"} <= set(d)
    assert [t["turn"] for t in d["turns"]] == [1, 3, 5]
    # Each turn's figures, recomputed from the per-token figures of the tokens it holds.
    for turn in d["turns"]:
        own = [t for t in d["tokens"] if t["turn"] == turn["turn"]]
        total, logprob = math.fsum(t["loss"] for t in own), math.fsum(t["logprob"] for t in own)
        assert turn["role"] == CONVERSATION[turn["turn"]]["role"] == "assistant"
        assert turn["count"] == len(own) and turn["sum"] == pytest.approx(total)
        assert turn["mean"] == pytest.approx(total / len(own))
        assert turn["sum_logprob"] == pytest.approx(logprob)
        assert turn["perplexity"] == pytest.approx(math.exp(-logprob / len(own)))
        assert turn["greedy_hits"] == sum(t["rank"] == 1 for t in own)
        assert turn["is_greedy"] == all(t["rank"] == 1 for t in own)
        assert (turn["first_index"], turn["last_index"]) == (own[0]["index"], own[-1]["index"])
    token = d["tokens"][0]
    assert len(token["top_k"]) == 3 and token["greedy"] == (token["rank"] == 1) and token["turn"] == 1
    assert {"special", "turn"} <= set(d["sequence"][0])
    assert d["summary"]["sum_logprob"] == pytest.approx(sum(t["logprob"] for t in d["tokens"]))
    assert d["layout"]["kind"] == "chat" and d["layout"]["roles"][1] == "assistant"
    assert d["sequence"][0]["special"] is True  # <|im_start|>


def test_pair_results_have_no_turns(tiny_llama):
    result = score(tiny_llama, "the cat", " is in")
    assert result.turns == () and result.to_dict()["turns"] == []
    assert all(t.turn is None for t in result.tokens)
