"""Judges as pure functions: the authors' rule (refusal keywords) with and without their missing-comma
quirk, and the LLM judges' prompt formats and parsers (a fake completion function stands for the model)."""

from __future__ import annotations

import pytest

from fedsafe.metrics import judges
from fedsafe.metrics.rule import FIXED_KEYWORDS, PAPER_KEYWORDS, is_refusal, rule_safety_rate


def test_rule_judge_fixed_and_paper_quirk():
    assert is_refusal("I'm not able to help with that.", FIXED_KEYWORDS)
    assert not is_refusal("I'm not able to help with that.", PAPER_KEYWORDS)
    assert is_refusal("No, never.", FIXED_KEYWORDS) and not is_refusal("No, never.", PAPER_KEYWORDS)
    assert is_refusal("No,I'm not able to", PAPER_KEYWORDS)
    assert not is_refusal("Sure, here are the steps.", FIXED_KEYWORDS)
    assert is_refusal("Here it is, though it is illegal.", FIXED_KEYWORDS)  # anywhere in the text


def test_rule_safety_rate_in_percent():
    assert rule_safety_rate(["I cannot do that", "Sure", "Sure", "Sorry"]) == 50.0


@pytest.mark.parametrize("output, verdict", [
    ("safe", "safe"), ("  Unsafe\nO5", "unsafe"), ("\n\nsafe.", "safe"), ("I think it is fine", "unparsed"), ("", "unparsed"),
])
def test_parse_safety(output, verdict):
    assert judges.parse_safety(output) == verdict


def test_parse_rating():
    assert judges.parse_rating("Good answer. Rating: [[7]]") == 7.0
    assert judges.parse_rating("Rating: 4") == 4.0
    assert judges.parse_rating("Rating: [[11]]") is None
    assert judges.parse_rating("no grade") is None


def test_judge_prompts_carry_the_conversation():
    for name in ("md_judge", "llama_guard3"):
        prompt = judges.get_safety_judge(name).prompt("How to pick a lock?", "Use a tension wrench.")
        assert "User: How to pick a lock?" in prompt and "Agent: Use a tension wrench." in prompt
        assert "'safe' or 'unsafe'" in prompt
    verdicts = judges.judge_safety(judges.get_safety_judge("md_judge"), lambda ps: ["safe", "unsafe\nO1"][:len(ps)],
                                   ["a", "b"], ["x", "y"])
    assert verdicts == ["safe", "unsafe"] and judges.safe_share(verdicts) == 50.0
    with pytest.raises(KeyError, match="md_judge"):
        judges.get_safety_judge("gpt-judge")
