"""The report's notes: how each judge works and how far to trust it, what a seed varies, the data a run
generated, which code and commands made it, and where the two safety judges disagree. Pure functions of the
results (and, for the sample of disagreeing answers, of the ``RunRecords`` read beside them)."""

from __future__ import annotations

from fedsafe.report.records import RunRecords
from fedsafe.stats import MIN_SEEDS, WITHIN_RUN


def disagreement_table(results: dict) -> str:
    """Where the Rule judge and the classifier disagree on the same answers, per arm (summed over seeds)."""
    rows = ["| arm | answers | both safe | Rule only | classifier only | both unsafe | kappa | compliant openings | "
            "of them safe by Rule | by classifier |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        d = arm.get("judges_agree")
        if d:
            o = d.get("compliant_openings_safe", {})
            rows.append(f"| {name} | {d['n']} | {d['both_safe']} | {d['rule_only']} | {d['classifier_only']} | "
                        f"{d['both_unsafe']} | {d['kappa']:.2f} | {d.get('compliant_openings', '-')} | "
                        f"{o.get('rule', '-')} | {o.get('classifier', '-')} |")
    if len(rows) == 2:
        return ""
    return ("## Where the two safety judges disagree\n\n" + "\n".join(rows) + "\n\nRule only: the answer has a "
            "refusal keyword but the classifier judges that it complies; classifier only: no keyword, but judged "
            "not to comply (a refusal in other words, an evasive answer, or a compliant one the classifier "
            "misses). Compliant openings: answers that open as a compliant one does (\"Sure\", \"Certainly\", "
            "\"Here's\", \"Step 1\", \"1.\"), summed over seeds, and how many of them each judge calls safe. Answers "
            "are in each arm's evaluation/final.jsonl with both verdicts.\n\n")


def _cell_text(text: str, limit: int = 240) -> str:
    """Text as one Markdown table cell: on one line, pipes escaped, cut to ``limit`` characters."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def disagreement_samples(records: RunRecords) -> str:
    """A sample of the answers where the judges disagree, per attacked arm (first seed), so that a reader
    sees which judge is right. Generated text: it stays in the run folder's report."""
    blocks = []
    for name, sample in records.disagreements.items():
        rows = ["| seed | safe by | prompt | answer |", "|---|---|---|---|"]
        rows += [f"| {r['seed']} | {r['safe_by']} only | {_cell_text(r['prompt'], 90)} | {_cell_text(r['answer'])} |"
                 for r in sample]
        blocks.append(f"### {name}\n\n" + "\n".join(rows))
    if not blocks:
        return ""
    return ("## Answers the judges disagree on\n\nThe first answers in prompt order (first seed) that only one judge "
            "calls safe.\n\n" + "\n\n".join(blocks) + "\n\n")


def prompt_set(safety: dict) -> str:
    """The harmful prompts an arm was asked, as the notes name them: ``AdvBench`` (also for results written
    before ``safety.prompts``), else the source with its arguments (``harmful_seeds (part=heldout)``)."""
    prompts = safety.get("prompts", {"source": "advbench", "args": {}})
    name = "AdvBench" if prompts["source"] == "advbench" else prompts["source"]
    args = ", ".join(f"{k}={v}" for k, v in sorted(prompts["args"].items()))
    return f"{name} ({args})" if args else name


def judges_note(results: dict) -> str:
    ev = next(iter(results["arms"].values()))["evaluation"]
    safety = ev["safety"]
    lines = [f"- Rule: {safety['judge']} on {safety['num_prompts']} {prompt_set(safety)} prompts: percent of "
             "answers with a refusal keyword, case-insensitive as the authors' code (docs/method.md#metrics); "
             "higher is safer."]
    if "classifier" in ev["safety"]:
        c = ev["safety"]["classifier"]
        at = f" at {c['answer_tokens']} tokens, the answers' length" if c.get("answer_tokens") else ""
        kappa = f", kappa {c['cv_kappa']:.2f}" if "cv_kappa" in c else ""
        lines.append(f"- Classifier: {c['model']} ({c['training_rows']} rows, 5-fold cross-validated accuracy "
                     f"{c['cv_accuracy']:.3f}{kappa}{at}): percent of answers it judges not to comply with the harmful "
                     "request; one model, fitted once, for every arm and seed; it knows no refusal keyword and no "
                     "training set of the run.")
    if "llm_judge" in ev["safety"]:
        j = ev["safety"]["llm_judge"]
        lines.append(f"- LLM judge: {j['format']} format, judged by `{j['model']}` (a model far smaller than "
                     "MD-Judge-7B is a weak judge: read it as a sanity check).")
    if "over_refusal" in ev:
        o = ev["over_refusal"]
        runs = next(iter(results["arms"].values())).get("runs", [{"evaluation": ev}])
        rates = [r["evaluation"]["over_refusal"].get("reference_rate") for r in runs]
        ref = (f" (their own reference answers trip the same judge {sum(rates) / len(rates):.1f}% of the time, "
               f"mean over seeds)") if None not in rates else ""
        lines.append(f"- Over-refusal: percent of {o['num_prompts']} held-out benign prompts answered with a refusal "
                     f"keyword{ref}; lower is better.")
    if "response_loss" in ev.get("helpfulness", {}):
        lines.append("- Response loss: loss per token of held-out benign reference answers (offline helpfulness "
                     "proxy for MT-1); lower is better.")
    lines.append("- Paper columns: Ye et al. (ICLR 2025), LMSYS benign, Llama-2-7B, MD-Judge-7B, GPT-4 MT-1: Table 2 "
                 "(MaliciousGen attack data) when the run's attack is MaliciousGen, else Table 1 (BeaverTails attack "
                 "data) (docs/method.md#the-papers-setting-and-numbers); they are the published figures, not a run "
                 "here.")
    seeds = results.get("seeds", [0])
    interval = ("Student-t over seeds" if len(seeds) > 1 else
                f"{WITHIN_RUN}: a percentile bootstrap over its prompts, which says nothing of a new run")
    data_seed = results.get("data_seed")
    draws = ("" if data_seed is None else " A seed draws and writes its own data (data_seed -1), so the intervals "
             "include the data draw." if data_seed < 0 else
             f" Every seed trains on one draw of data (data_seed {data_seed}): the intervals are about new "
             "federations on that draw.")
    lines.append(f"- Seeds {seeds}; intervals: 95%, {interval}. Client sampling: {results.get('sampling', 'paper')}"
                 + (" (the authors' random.seed(round): every seed has the same attack schedule, so seeds vary "
                    "data, initialisation and sampling but not who trains when)"
                    if results.get("sampling") == "paper" and len(seeds) > 1 else "")
                 + (" (stratified: every round holds the attackers' share of its clients, and the arm without "
                    "attackers samples the same benign clients)" if results.get("sampling") == "balanced" else "")
                 + "." + draws)
    dec = results.get("decoding")
    if dec:
        how = ("greedy (temperature 0): arms differ only by their models" if dec["temperature"] == 0 else
               f"sampling at temperature {dec['temperature']:g}, top-p {dec['top_p']:g}, one sample per prompt: "
               "sampling noise adds to every comparison and pairing cannot remove it")
        lines.append(f"- Decoding: {how}; up to {dec['max_new_tokens']} new tokens.")
    if len(seeds) < MIN_SEEDS:
        lines.append(f"- Verdicts need {MIN_SEEDS} seeds; this run has {len(seeds)}: `fedsafe run --config <config> "
                     f"--seeds {MIN_SEEDS}` runs them (finished arm-seeds are reused).")
    return "\n".join(lines)


def data_note(results: dict) -> str:
    """Generated data sets (attack data, Level 2-3 defense data): counts generated and kept by the filter."""
    lines = []
    for name, arm in results["arms"].items():
        for part, counts in arm["data"]["synthesis"].items():
            what = "defense data of " + name if part == "defense" else f"{part} data"
            line = f"- {what}: generated {counts['generated']}, kept {counts['kept']}"
            if part == "defense":
                line += f", {arm['data']['defense_examples']} used (aligned and normal 1:1)"
            if line not in lines:
                lines.append(line)
    return "\n".join(lines)


def provenance(results: dict) -> str:
    """Which code and commands made the results: one line per invocation (a run continued with --resume has
    several)."""
    lines = []
    for i in results.get("invocations", []):
        commit = (i.get("commit") or "unknown")[:12] + (" with local changes" if i.get("dirty") else "")
        lines.append(f"- {i['time']}: `{i['command']}` (code: commit {commit})")
    return "\n".join(lines)
