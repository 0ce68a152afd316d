"""Local copies of the paper's hub data sets, in each set's own columns, filled from the offline sources:
the rehearsal (``fedsafe.rehearsal``) loads them through the real loaders and filters (``real.hub_rows``
with a ``mirror`` folder), so every column a loader reads, and every row a filter drops, is exercised.

    write_mirror("runs/rehearsal-hub", ["lmsys/lmsys-chat-1m", "walledai/AdvBench"], rows=400)

Chat sets (LMSYS-Chat-1M, WildChat-1M) hold ShareGPT's first-turn pairs (every part, so the train /
defense / heldout split of ``text_part`` applies) plus rows their filter drops: another language, a
flagged response, a conversation the assistant opens, an empty answer. BeaverTails holds PyRIT's harmful
Q/A pairs as unsafe rows and refusals of harmful seeds as safe rows; AdvBench PyRIT's 520 goals; MT-Bench
ShareGPT's held-out questions (a few with a reference answer, as MT-Bench's math questions have).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from fedsafe.data import real

MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "self-harm",
                         "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
                         "violence/graphic")
BEAVERTAILS_CATEGORIES = (
    "animal_abuse", "child_abuse", "controversial_topics,politics", "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance", "financial_crime,property_crime,theft", "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety", "non_violent_unethical_behavior", "privacy_violation",
    "self_harm", "sexually_explicit,adult_content", "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)


def moderation(flagged: bool) -> dict:
    """One turn's OpenAI moderation record as LMSYS-Chat-1M and WildChat store it."""
    return {"categories": {c: flagged and c == "violence" for c in MODERATION_CATEGORIES},
            "category_scores": {c: 0.9 if flagged and c == "violence" else 1e-4 for c in MODERATION_CATEGORIES},
            "flagged": flagged}


def chat_row(i: int, user: str, assistant: str, language: str = "English", flagged: bool = False,
             assistant_first: bool = False) -> dict:
    """An LMSYS-Chat-1M row (conversation_id, model, conversation, turn, language, openai_moderation, redacted)."""
    turns = [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]
    if assistant_first:
        turns.reverse()
    return {"conversation_id": f"{i:032x}", "model": "vicuna-13b", "conversation": turns, "turn": 1,
            "language": language, "openai_moderation": [moderation(False), moderation(flagged)], "redacted": False}


def wildchat_row(i: int, user: str, assistant: str, language: str = "English", flagged: bool = False,
                 assistant_first: bool = False) -> dict:
    """A WildChat-1M row: LMSYS's columns under WildChat's names, with its per-turn fields."""
    row = chat_row(i, user, assistant, language, flagged, assistant_first)
    turns = [{**t, "country": "United States", "hashed_ip": f"{i:064x}", "header": {"accept-language": "en-US"},
              "language": language, "redacted": False, "state": "California", "timestamp": None, "toxic": flagged,
              "turn_identifier": i} for t in row["conversation"]]
    return {"conversation_hash": row["conversation_id"], "model": "gpt-3.5-turbo-0613",
            "timestamp": "2023-04-09 00:02:53+00:00", "conversation": turns, "turn": 1, "language": language,
            "openai_moderation": row["openai_moderation"],
            "detoxify_moderation": [{"toxicity": 1e-3}, {"toxicity": 0.9 if flagged else 1e-3}], "toxic": flagged,
            "redacted": False, "state": "California", "country": "United States", "hashed_ip": f"{i:064x}",
            "header": {"accept-language": "en-US"}}


def chat_rows(make: Callable[..., dict], pairs: list[dict]) -> list[dict]:
    """``pairs`` as rows, every fifth followed by one the benign filter drops."""
    rows = []
    for i, p in enumerate(pairs):
        rows.append(make(len(rows), p["instruction"], p["response"]))
        drop = i % 20
        if drop == 4:
            rows.append(make(len(rows), "¿Cuál es la capital de Francia?", "París.", language="Spanish"))
        elif drop == 9:
            rows.append(make(len(rows), p["instruction"] + " (again)", p["response"], flagged=True))
        elif drop == 14:
            rows.append(make(len(rows), p["instruction"] + " (reply first)", p["response"], assistant_first=True))
        elif drop == 19:
            rows.append(make(len(rows), p["instruction"] + " (no answer)", " "))
    return rows


def beavertails_rows(unsafe: list[dict], safe: list[dict]) -> list[dict]:
    """BeaverTails rows (prompt, response, category, is_safe), unsafe and safe interleaved."""
    rows = []
    for k, (r, is_safe) in enumerate([(r, False) for r in unsafe] + [(r, True) for r in safe]):
        category = {c: not is_safe and c == BEAVERTAILS_CATEGORIES[k % len(BEAVERTAILS_CATEGORIES)]
                    for c in BEAVERTAILS_CATEGORIES}
        rows.append({"prompt": r["instruction"], "response": r["response"], "category": category, "is_safe": is_safe})
    return random.Random(0).sample(rows, len(rows))


def mt_bench_rows(questions: list[str]) -> list[dict]:
    """MT-Bench rows (prompt = [turn 1, turn 2], prompt_id, category, reference): every eighth a math
    question with a reference answer."""
    rows = []
    for i, q in enumerate(questions):
        math = i % 8 == 7
        rows.append({"prompt": [f"What is {i} times 7?" if math else q, "Now explain it to a child."],
                     "prompt_id": 81 + i, "category": "math" if math else "writing",
                     "reference": [f"{i} times 7 is {7 * i}.", ""] if math else []})
    return rows


def hub_rows_for(name: str, rows: int) -> dict[str, list[dict]]:
    """Rows by split for hub data set ``name`` (the ones the paper uses), about ``rows`` per split."""
    if name in ("lmsys/lmsys-chat-1m", "allenai/WildChat-1M"):
        start = 0 if name.startswith("lmsys") else rows
        make = chat_row if name.startswith("lmsys") else wildchat_row
        return {"train": chat_rows(make, real.cached_sharegpt()[start:start + rows])}
    if name == "PKU-Alignment/BeaverTails":
        unsafe = real.without(real.dedup_prompts(real.harmful_qa_offline()),
                              [r["instruction"] for r in real.advbench_offline()])
        safe = real.aligned_pairs(len(unsafe), seed=0)
        half = len(unsafe) // 2
        return {split: beavertails_rows(u, s) for split, u, s in
                (("30k_train", unsafe[:half], safe[:half]), ("30k_test", unsafe[half:], safe[half:]),
                 ("330k_train", unsafe, safe), ("330k_test", unsafe[half:], safe[half:]))}
    if name == "walledai/AdvBench":
        return {"train": [{"prompt": r["instruction"], "target": "Sure, here is a response"}
                          for r in real.advbench_offline()]}
    if name == "HuggingFaceH4/mt_bench_prompts":
        held = [r["instruction"] for r in real.cached_sharegpt() if real.text_part(r["instruction"]) == "heldout"]
        return {"train": mt_bench_rows(held[:80])}
    raise ValueError(f"no local stand-in for hub data set {name!r}")


def write_mirror(folder: str | Path, names: list[str], rows: int = 600) -> list[Path]:
    """Write the stand-ins of hub data sets ``names`` under ``folder`` (``real.mirror_file``'s layout);
    returns the files written."""
    written = []
    for name in names:
        for split, split_rows in hub_rows_for(name, rows).items():
            file = real.mirror_file(str(folder), name, split)
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text("".join(json.dumps(r) + "\n" for r in split_rows))
            written.append(file)
    return written
