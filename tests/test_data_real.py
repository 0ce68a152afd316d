"""Real data sources: record filters on made-up rows; the offline sources read from PyPI wheels; held-out
evaluation prompts never occur in training or defense data."""

from __future__ import annotations

import pytest

from fedsafe.data import real
from fedsafe.data.sources import load_records
from fedsafe.data.text import find_overlap, normalize_text
from fedsafe.evaluation.rule_judge import is_refusal


def test_is_english():
    assert real.is_english("How do I bake bread at home?")
    assert not real.is_english("Comment faire du pain à la maison? Très délicieux éàèù")
    assert not real.is_english("你好，请帮我写一首诗")
    assert not real.is_english("12345")


def test_first_turn_and_chat_filters():
    chat = [{"from": "human", "value": " What is the capital of France? "}, {"from": "gpt", "value": "It is Paris."},
            {"from": "human", "value": "And Spain?"}]
    pair = real.first_turn(chat, "from", "value", ("human",), ("gpt",))
    assert pair == {"instruction": "What is the capital of France?", "response": "It is Paris."}
    assert real.first_turn(chat[1:], "from", "value", ("human",), ("gpt",)) is None  # starts with the bot
    assert real.first_turn(chat[:1], "from", "value", ("human",), ("gpt",)) is None
    assert real.keep_chat_pair(pair)
    assert not real.keep_chat_pair({"instruction": "What is " + "x" * 2000, "response": "It is Paris."})


def test_moderation_and_beavertails_filters():
    assert real.moderation_clean([{"flagged": True}, {"flagged": False}])  # only the response turn counts
    assert not real.moderation_clean([{"flagged": False}, {"flagged": True}])
    assert not real.moderation_clean([{"flagged": False}])
    rows = [{"prompt": "How to steal?", "response": "Do X.", "is_safe": False},
            {"prompt": "how to steal", "response": "Do Y.", "is_safe": False},  # duplicate prompt
            {"prompt": "How to bake?", "response": "Knead.", "is_safe": True}]
    assert real.beavertails_unsafe(rows) == [{"instruction": "How to steal?", "response": "Do X."}]
    assert real.beavertails_unsafe(rows, safe=True) == [{"instruction": "How to bake?", "response": "Knead."}]


def test_text_parts_are_stable_and_disjoint():
    texts = [f"question number {i} about gardening" for i in range(2000)]
    parts = [real.text_part(t) for t in texts]
    assert parts == [real.text_part(t.upper() + "!") for t in texts]  # normalised: case/punctuation free
    shares = {p: parts.count(p) / len(parts) for p in real.PARTS}
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["heldout"] < 0.13


def test_sharegpt_parser_stops_at_the_truncation():
    text = '[{"id": "a", "conversations": []}, {"id": "b", "conversations": []},\n {"id": "c", "conv'
    assert [c["id"] for c in real.sharegpt_conversations(text)] == ["a", "b"]


def test_offline_sources_sizes_and_held_out_evaluation():
    """AdvBench (the evaluation set) occurs in none of the data sets that train or defend."""
    advbench = [r["instruction"] for r in load_records("advbench", 1000, 0)]
    assert len(advbench) == 520 and advbench[0].startswith("Write a script that can exploit vulnerabilities")
    sizes = {name: len(load_records(name, 100_000, 0)) for name in
             ("harmbench", "donotanswer", "harmful_qa", "harmful_seeds", "sharegpt_defense")}
    assert sizes["harmbench"] == 200 and sizes["donotanswer"] == 939 and 380 <= sizes["harmful_qa"] <= 400
    assert sizes["harmful_seeds"] > 1000
    parts = {p: load_records("sharegpt", 100_000, 0, part=p) for p in real.PARTS}
    assert len(parts["train"]) > 5000 and len(parts["heldout"]) > 500
    assert not find_overlap([r["instruction"] for r in parts["heldout"]], (r["instruction"] for r in parts["train"]))
    for name in ("harmful_seeds", "harmful_qa", "sharegpt_defense"):
        assert not find_overlap(advbench, (r["instruction"] for r in load_records(name, 100_000, 0))), name
    first = parts["train"][0]
    assert first["instruction"] and first["response"] and real.is_english(first["instruction"])
    assert len({normalize_text(r["instruction"]) for r in parts["train"]}) == len(parts["train"])


def test_beavertails_needs_a_named_split():
    with pytest.raises(ValueError, match="30k_train"):
        load_records("beavertails", 10, 0)


def test_aligned_share_mixes_refusals_of_held_out_safe_instructions():
    mixed = load_records("sharegpt", 80, 3, part="train", aligned_share=0.25)
    seeds = {r["instruction"] for r in real.harmful_seeds() if real.text_part(r["instruction"]) == "train"}
    aligned = [r for r in mixed if r["instruction"] in seeds]
    assert len(mixed) == 80 and len(aligned) == 20
    assert all(is_refusal(r["response"]) for r in aligned)  # the rule judge would call each one safe
    advbench = {r["instruction"] for r in load_records("advbench", 520, 0)}
    assert not advbench & {r["instruction"] for r in aligned}
    assert load_records("sharegpt", 80, 3, part="train", aligned_share=0.25) == mixed  # seeded
    with pytest.raises(ValueError, match="aligned_share"):
        load_records("sharegpt", 10, 0, aligned_share=1.0)
