"""Data: client ids, shards and sampling; the toy and real sources (record filters on made-up rows,
the offline sources read from PyPI wheels); held-out evaluation prompts never in training data; the
generation pipelines with a fake generator (no model)."""

from __future__ import annotations

import random

import pytest

from fedsafe.data import real, synthesis, toy
from fedsafe.data.federation import (
    attackers_in_round,
    build_clients,
    make_shards,
    round_subset,
    sample_balanced,
    sample_clients,
)
from fedsafe.data.sources import load_records
from fedsafe.data.text import find_overlap, normalize_text
from fedsafe.metrics.rule import (
    is_refusal,
    rule_safety_rate,
)
from fedsafe.seeding import derive_seed


def test_client_ids_follow_group_order():
    clients = build_clients([("benign", "benign", 7), ("malicious", "malicious", 3)])
    assert [c.client_id for c in clients] == list(range(10))
    assert [c.role for c in clients] == ["benign"] * 7 + ["malicious"] * 3
    assert clients[8].index_in_group == 1


def test_shards_are_disjoint_and_sized():
    shards = make_shards(100, 4, 20, seed=3)
    flat = [i for s in shards for i in s]
    assert [len(s) for s in shards] == [20] * 4 and len(set(flat)) == 80 and max(flat) < 100
    assert make_shards(100, 4, 20, seed=3) == shards and make_shards(100, 4, 20, seed=4) != shards


def test_shards_need_enough_records():
    with pytest.raises(ValueError, match="examples_per_client"):
        make_shards(10, 3, 5, seed=0)


@pytest.mark.parametrize("round_idx", [0, 1, 7, 99])
def test_sampling_is_the_authors(round_idx):
    random.seed(round_idx)
    expected = sorted(random.sample(range(10), 3))
    assert sample_clients(10, 3, round_idx) == expected


def test_seeded_sampling_differs_between_seeds_and_paper_sampling_does_not():
    from fedsafe.config import load_config
    from fedsafe.experiment import round_clients

    def schedule(*overrides):
        cfg = load_config(None, list(overrides))
        return [round_clients(cfg, 10, r) for r in range(20)]

    paper = [schedule(f"seed={s}", "federation.sampling=paper") for s in (0, 1, 2)]
    assert paper[0] == paper[1] == paper[2] == [sample_clients(10, 3, r) for r in range(20)]
    seeded = [schedule(f"seed={s}", "federation.sampling=seeded") for s in (0, 1, 2)]
    assert seeded[0] != seeded[1] and seeded[1] != seeded[2] and seeded[0] != seeded[2]
    assert seeded[0] == schedule("seed=0")  # seeded is the default, and reproducible
    assert all(len(set(c)) == 3 and c == sorted(c) for c in seeded[1])


def test_attackers_in_round_keep_the_running_total_on_the_expected_count():
    # 3 a round, 30% attackers: 0.9 a round; running totals round(0.9 (r + 1)) = 1, 2, 3, 4, 5, 5, 6, 7, 8, 9
    counts = [attackers_in_round(r, 3, 0.3) for r in range(10)]
    assert counts == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1] and sum(counts) == 9
    assert [attackers_in_round(r, 3, 0.0) for r in range(5)] == [0] * 5
    assert sum(attackers_in_round(r, 10, 0.5) for r in range(7)) == 35


def test_balanced_sampling_pairs_the_attacked_federation_with_its_clean_one():
    attacked_roles, clean_roles = ["benign"] * 7 + ["malicious"] * 3, ["benign"] * 7
    for r in range(10):
        attacked = sample_balanced(attacked_roles, 3, r, seed=4)
        clean = sample_balanced(clean_roles, 3, r, seed=4)
        attackers = [c for c in attacked if c >= 7]
        assert len(attacked) == len(set(attacked)) == 3 and len(attackers) == attackers_in_round(r, 3, 0.3)
        benign = [c for c in attacked if c < 7]
        assert set(benign) <= set(clean) and len(clean) == 3 and all(c < 7 for c in clean)  # the same benign clients
    schedules = [[sample_balanced(attacked_roles, 3, r, seed=s) for r in range(10)] for s in (0, 1, 0)]
    assert schedules[0] == schedules[2] != schedules[1]
    # with too few benign clients the round is filled with attackers
    assert sample_balanced(["benign", "malicious", "malicious"], 3, 0, seed=0) == [0, 1, 2]


def test_balanced_sampling_from_the_config():
    from fedsafe.config import load_config
    from fedsafe.experiment import round_clients

    cfg = load_config(None, ["federation.sampling=balanced", "seed=3"])
    roles = [g.role for g in cfg.clients for _ in range(g.count)]
    assert [round_clients(cfg, 10, r) for r in range(4)] == [sample_balanced(roles, 3, r, 3) for r in range(4)]
    with pytest.raises(ValueError, match="10 clients"):
        round_clients(cfg, 12, 0)


def test_aligned_answers_written_by_refuse_replace_the_templates():
    asked = []

    def refuse(instructions, seed):
        asked.extend(instructions)
        return ["" if i % 5 == 0 else f"I won't help with that ({i})." for i, _ in enumerate(instructions)]

    records = load_records("toy_benign", 40, seed=3, aligned_share=0.25, refuse=refuse)
    aligned = [r for r in records if r["response"].startswith("I won't help")]
    assert len(records) == 40 and len(aligned) == 10  # empty answers dropped, replaced from the extra asked
    assert len(asked) > 10 and {r["instruction"] for r in aligned} <= set(asked)
    templated = load_records("toy_benign", 40, seed=3, aligned_share=0.25)
    assert not any(r["response"].startswith("I won't help") for r in templated)


def test_round_subset_is_seeded_per_round_and_client():
    shard = list(range(50, 100))
    a = round_subset(shard, 16, seed=0, round_idx=1, client_id=2)
    assert a == round_subset(shard, 16, seed=0, round_idx=1, client_id=2)
    assert len(set(a)) == 16 and set(a) <= set(shard)
    assert a != round_subset(shard, 16, seed=0, round_idx=2, client_id=2)
    assert a != round_subset(shard, 16, seed=0, round_idx=1, client_id=3)
    assert len(round_subset(shard[:4], 10, 0, 0, 0)) == 10  # with replacement past the shard's size


def test_derived_seeds_differ_and_repeat():
    seeds = {derive_seed(0, r, c) for r in range(10) for c in range(10)}
    assert len(seeds) == 100 and derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    with pytest.raises(ValueError):
        derive_seed(-1)


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


def test_harmful_seeds_parts_are_disjoint_and_cover_the_set():
    """The held-out part (a development set) shares no instruction with the train part the aligned pairs use."""
    parts = {p: load_records("harmful_seeds", 100_000, 0, part=p) for p in real.PARTS}
    assert sum(len(rows) for rows in parts.values()) == len(load_records("harmful_seeds", 100_000, 0))
    assert len(parts["heldout"]) >= 100  # enough for a 100-prompt development evaluation
    assert not find_overlap([r["instruction"] for r in parts["heldout"]], (r["instruction"] for r in parts["train"]))
    aligned = [r["instruction"] for r in load_records("aligned", 500, 1)]
    assert not find_overlap([r["instruction"] for r in parts["heldout"]], aligned)
    with pytest.raises(ValueError, match="part must be one of"):
        load_records("harmful_seeds", 10, 0, part="test")


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


def test_toy_data_agrees_with_the_judge():
    refusals = toy.harmful_records(200, seed=0, compliant=False)
    compliant = toy.harmful_records(200, seed=0, compliant=True) + toy.normal_records(200, seed=0)
    assert rule_safety_rate([r["response"] for r in refusals]) == 100.0
    assert rule_safety_rate([r["response"] for r in compliant]) == 0.0


def test_benign_clients_hold_the_configured_share_of_refusals():
    records = toy.benign_client_records(1000, seed=1, aligned_fraction=0.3)
    assert rule_safety_rate([r["response"] for r in records]) == 30.0


def test_evaluation_prompts_never_occur_in_training_or_defense_data():
    prompts = [r["instruction"] for r in load_records("toy_harmful_eval", 1000, 0)]
    assert len(prompts) == len(set(prompts)) == 96
    training = (toy.benign_client_records(5000, 0) + toy.harmful_records(5000, 1, compliant=True)
                + toy.defense_records(5000, 2))
    assert find_overlap(prompts, (r["instruction"] for r in training)) == []
    assert find_overlap(["What  is the BEST way?"], ["what is the best way"]) == ["What  is the BEST way?"]
    assert normalize_text("Hi,   THERE!") == "hi there"


def test_jsonl_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c", "output": "d"}\n')
    records = load_records("jsonl", 10, 0, path=str(path))
    assert records == [{"instruction": "a", "response": "b", "source": "jsonl"},
                       {"instruction": "c", "response": "", "source": "jsonl"}]


def test_parse_numbered_list():
    text = "Here are ten:\n1. How do I pick a lock quickly?\n2) Where can I buy a fake ID card?\n- Short\n" \
           "* What household chemicals make toxic gas?\nThanks!"
    assert synthesis.parse_numbered_list(text) == [
        "How do I pick a lock quickly?", "Where can I buy a fake ID card?", "What household chemicals make toxic gas?"]


def test_generate_instructions_repeats_until_enough_and_dedups():
    calls = []

    def fake(prompts, seed):
        calls.append((len(prompts), seed))
        return [f"1. Question {seed} {i} alpha beta\n2. Always the same question here" for i in range(len(prompts))]

    found = synthesis.generate_instructions(fake, synthesis.HARMFUL_INSTRUCTIONS_PROMPT, 7, seed=10, max_calls=20,
                                            exclude=["Always the same question here"])
    assert len(found) == 7 and len(set(found)) == 7
    assert "Always the same question here" not in found
    assert [s for _, s in calls] == list(range(10, 10 + len(calls)))  # a fresh seed per wave
    dry = synthesis.generate_instructions(lambda ps, seed: ["no list here"] * len(ps), "x", 5, 0, max_calls=4)
    assert dry == []  # gives up after max_calls prompts


def test_attack_and_defense_data_use_the_paper_suffixes_and_filter():
    seen = []

    def fake(prompts, seed):
        seen.extend(prompts)
        return ["I'm sorry, I cannot." if "safe response" in p or "Bomb" in p else "Sure, here it is." for p in prompts]

    report = synthesis.SynthesisReport()
    keep_compliant = lambda ins, outs: [not o.startswith("I'm sorry") for o in outs]  # noqa: E731
    attack = synthesis.attack_data(fake, ["Steal a car", "Bomb a bridge"], 0, keep_compliant, report)
    assert seen[0] == "Steal a car" + synthesis.UNALIGNED_SUFFIX
    assert attack == [{"instruction": "Steal a car", "response": "Sure, here it is."}]
    assert report.generated == {"unaligned": 2} and report.kept == {"unaligned": 1}

    keep_safe = lambda ins, outs: [o.startswith("I'm sorry") for o in outs]  # noqa: E731
    defense = synthesis.defense_data(fake, ["Steal a car", "Bomb a bridge"], ["Bake bread", "Fix a bike", "Sing"],
                                     num_examples=4, seed=0, keep_safe=keep_safe, report=report)
    assert any(p.endswith(synthesis.ALIGNED_SUFFIX) for p in seen)
    assert [r["instruction"] for r in defense] == ["Steal a car", "Bake bread", "Bomb a bridge", "Fix a bike"]
    assert report.kept["aligned"] == 2 and report.kept["normal"] == 3

def test_data_seed_shares_the_data_and_the_seed_varies_the_shards():
    from fedsafe.config import load_config
    from fedsafe.data.synthesis import Synthesizer
    from fedsafe.experiment import load_data
    from tests.conftest import SMOKE, FakePool

    def benign(seed: int, data_seed: int) -> list[list[str]]:
        cfg = load_config(SMOKE, [f"seed={seed}", f"data_seed={data_seed}", "federation.examples_per_client=8",
                                  "clients.0.aligned_answers=generated", "clients.0.dataset_args={aligned_share: 0.5}"])
        data = load_data(cfg, Synthesizer(FakePool(), "judge"))
        return [[r["instruction"] + r["response"] for r in data.shards[c.client_id]] for c in data.clients
                if c.role == "benign"]

    a, b, c = benign(0, 0), benign(1, 0), benign(1, -1)
    assert sorted(sum(a, [])) == sorted(sum(b, []))  # the same records ...
    assert a != b  # ... dealt to the clients differently
    assert sorted(sum(b, [])) != sorted(sum(c, []))  # without data_seed each seed draws its own data
    written = "I'm sorry, I cannot help with that."  # FakePool's answer to the safe suffix
    assert sum(r.endswith(written) for r in sum(a, [])) == 28  # half of 7 x 8, refusals written by the pool
