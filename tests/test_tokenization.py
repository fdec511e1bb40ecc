"""Separate vs joint tokenization of a prompt/answer pair, and parity with lm-evaluation-harness.

The reference below re-implements lm-evaluation-harness's HF path (``_encode_pair`` + the log-softmax
sum of ``_loglikelihood_tokens``, with ``add_special_tokens=False`` as it uses for causal LMs) in plain
torch, independently of ce-inspect's code.
"""

from __future__ import annotations

import pytest
import torch
from conftest import byte_tokenizer

from ce_inspect import Layout, ScoreOptions, encode, load, score
from ce_inspect.text import decode_tokens


def lm_eval_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool, list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    context_enc = tok(context, add_special_tokens=False)["input_ids"]
    continuation_enc = whole[len(context_enc) :]
    inp = torch.tensor([(context_enc + continuation_enc)[:-1]])
    with torch.no_grad():
        logits = model(inp).logits[0, -len(continuation_enc) :].float()  # [n_cont, vocab]
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(continuation_enc)
    loglik = float(logp.gather(1, target[:, None]).sum())
    greedy = bool((logp.argmax(dim=-1) == target).all())
    return loglik, greedy, continuation_enc


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(add_bos=False)


def answer_ids(example) -> list[int]:
    return [t for t, s in zip(example.input_ids, example.segments) if s == "answer"]


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("x\n\n", "y"),  # separate: 'x' '\n\n' | 'y'; joint: 'x' | '\n' '\n' 'y' (different tokens)
        ("Q:\n", "4"),  # same tokens, but the newline moves to the answer
        ("Name:\t", "Bo"),
        ("Answer: ", "the cat"),  # separate: ... ' ' | 't' 'he'; joint: ... | ' the'
    ],
)
def test_boundary_difference_is_reported(tok, prompt, answer):
    sep = encode(tok, prompt, answer, Layout())
    joint = encode(tok, prompt, answer, Layout(tokenization="joint"))
    for example, used in ((sep, "separate"), (joint, "joint")):
        boundary = example.layout["boundary"]
        assert boundary["differs"] is True and boundary["used"] == used
        assert example.layout["tokenization"] == used
        assert any("separate and joint tokenization differ" in n and "scores depend" in n for n in example.notes)
    # The reported windows are the real splits: joining their answer parts gives each mode's answer tail.
    boundary = sep.layout["boundary"]
    for mode, example in (("separate", sep), ("joint", joint)):
        window_answer = [t["token_id"] for t in boundary[mode] if t["part"] == "answer"]
        assert answer_ids(example)[: len(window_answer)] == window_answer
        assert boundary["answer_tokens"][mode] == len(answer_ids(example))
    # The joint answer carries the prompt's trailing whitespace, and decodes to it.
    assert "".join(decode_tokens(tok, answer_ids(joint))) == prompt[len(prompt.rstrip()) :] + answer
    assert "".join(decode_tokens(tok, answer_ids(sep))) == answer


def test_no_difference_when_the_boundary_is_clean(tok):
    for mode in ("separate", "joint"):
        example = encode(tok, "Hi", " there", Layout(tokenization=mode))
        assert example.layout["boundary"] == {
            "differs": False,
            "used": mode,
            "answer_tokens": {"separate": len(answer_ids(example)), "joint": len(answer_ids(example))},
        }
        assert not any("differ" in n for n in example.notes)


def test_joint_with_bos_and_sep(tiny_llama):
    tok = tiny_llama.tokenizer
    example = encode(tok, "Q", "the", Layout(tokenization="joint", sep=": "))
    assert example.input_ids[0] == tok.bos_token_id
    # lm-evaluation-harness's context string includes the separator; its trailing space joins the answer.
    assert "".join(decode_tokens(tok, answer_ids(example))) == " the"
    assert example.segments.count("sep") == 0


def test_joint_answer_absorbed_by_the_prompt_fails(tok):
    from ce_inspect.errors import InputError

    # The context "a t" is ['a', ' t'] and the whole "a the" is ['a', ' the']: two tokens each, so the
    # continuation (whole minus the context's length) is empty.
    with pytest.raises(InputError, match="joint.*no tokens of its own"):
        encode(tok, "a t", "he", Layout(tokenization="joint"))


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    return load(str(tiny_gpt2_dir), device="cpu", quiet=True)


@pytest.mark.parametrize(("context", "continuation"), [("x\n\n", "y"), ("Q: the cat\n", "in"), ("Name:\t", "Bo")])
def test_joint_matches_lm_evaluation_harness(tiny_gpt2, context, continuation):
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer
    want, want_greedy, want_ids = lm_eval_loglikelihood(model, tok, context, continuation)
    joint = score(tiny_gpt2, context, continuation, layout=Layout(tokenization="joint", add_eos=False))
    assert [t.token_id for t in joint.tokens] == want_ids
    assert joint.summary.sum_logprob == pytest.approx(want, abs=1e-4)
    assert joint.summary.is_greedy == want_greedy
    # The default (separate) tokenization scores other targets, so the parity is not a coincidence.
    separate = score(tiny_gpt2, context, continuation, layout=Layout(add_eos=False))
    assert separate.summary.sum_logprob != pytest.approx(want, abs=1e-4)
    assert joint.layout["boundary"]["differs"] and separate.layout["boundary"]["differs"]


@pytest.mark.default_model
def test_smollm2_joint_matches_lm_evaluation_harness(smollm2):
    context, continuation = "Question: What is the capital of France?\nAnswer:\n", "Paris"
    want, want_greedy, want_ids = lm_eval_loglikelihood(smollm2.model, smollm2.tokenizer, context, continuation)
    result = score(
        smollm2, context, continuation, layout=Layout(tokenization="joint", add_eos=False), options=ScoreOptions()
    )
    assert [t.token_id for t in result.tokens] == want_ids
    assert [t.token for t in result.tokens] == ["\n", "Paris"]
    assert result.summary.sum_logprob == pytest.approx(want, abs=1e-4)
    assert result.summary.is_greedy == want_greedy
    assert result.layout["boundary"]["differs"]
