"""The rehearsal of a GPU config on a CPU (``launch.py --config configs/paper_gpu.yaml --rehearse``): the whole
pipeline of the config, in minutes, before anyone spends GPU hours on it.

``rehearsal_config`` keeps the config's arms, rules, attack, defense schedule, judges' prompt formats and
parsers, metrics and report, and replaces what a CPU cannot hold:

- every named model by a small one of the same family: a base Llama by ``builtin:tiny-llama``, an instruct
  Llama (Llama Guard, a chat judge) by ``builtin:smollm2-135m-instruct``, a Mistral model (Mistral-7B-Instruct,
  MD-Judge) by ``builtin:smollm2-135m-instruct-mistral``, a DeBERTa reward model by ``builtin:tiny-reward-deberta``;
- an OpenAI-compatible helpfulness endpoint by the pool serving the judge's stand-in (same prompt, parser);
- every hub data set by a local copy in the hub's own columns (``fedsafe.data.standins``), which the real
  loaders and filters read through ``datasets`` (the sources' ``mirror`` argument);
- GPUs, 8-bit loading, vLLM and a cluster address by CPU trainers, float32, HF generation and a local Ray;
- the sizes (rounds, steps, records, prompts, tokens, seeds) by a few of each.

It returns the changes as lines ``key: old -> new (why)``, which ``launch.py`` prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fedsafe.cluster.plan import generation_reserve
from fedsafe.config import ExperimentConfig, from_yaml_text, to_dict
from fedsafe.data.sources import hub_set, on_hub
from fedsafe.preflight import data_fields

BASE_LLAMA, INSTRUCT_LLAMA = "builtin:tiny-llama", "builtin:smollm2-135m-instruct"
MISTRAL, REWARD = "builtin:smollm2-135m-instruct-mistral", "builtin:tiny-reward-deberta"
SIZES = {  # (section, key): the rehearsal's value
    ("federation", "num_rounds"): 2, ("federation", "examples_per_client"): 2,
    ("train", "local_steps"): 2, ("train", "batch_size"): 2, ("train", "max_length"): 128,
    ("evaluation", "num_prompts"): 8, ("evaluation", "max_new_tokens"): 16, ("evaluation", "batch_size"): 8,
    ("evaluation", "round_num_prompts"): 4, ("evaluation", "num_benign"): 4, ("evaluation", "num_helpfulness"): 4,
    ("evaluation", "helpfulness_max_tokens"): 24,
    ("defense", "num_examples"): 8, ("defense", "steps"): 4, ("defense", "rounds"): 2, ("defense", "batch_size"): 2,
}
SYNTHESIS_TOKENS = 96  # room for a list of several generated instructions


def stand_in_model(name: str) -> tuple[str, str]:
    """(small model of the same family, the family in words) for a hub model id; builtins and folders stay."""
    if not name or name.startswith("builtin:") or Path(name).expanduser().exists():
        return name, ""
    low = name.lower()
    if "deberta" in low or "reward" in low:
        return REWARD, "a DeBERTa-v2 reward model"
    if "mistral" in low or "md-judge" in low:
        return MISTRAL, "an instruct model of the Mistral family"
    if any(word in low for word in ("instruct", "chat", "guard", "gpt")):
        return INSTRUCT_LLAMA, "an instruct model of the Llama family"
    return BASE_LLAMA, "a pre-trained (not chat) model of the Llama family"


class Changes:
    """The config as a nested dict, and the list of what the rehearsal changed in it."""

    def __init__(self, d: dict) -> None:
        self.d, self.lines = d, []

    def set(self, path: str, value, why: str) -> None:
        *parents, key = path.split(".")
        node = self.d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if node.get(key) != value:
            self.lines.append(f"{path}: {node.get(key)!r} -> {value!r} ({why})")
            node[key] = value


def replace_models(c: Changes) -> None:
    d = c.d
    for path in ("model.name", "generation.model", "evaluation.judge_model", "evaluation.reward_model"):
        section, key = path.split(".")
        small, family = stand_in_model(d[section][key])
        if family:
            c.set(path, small, f"{family}, small enough for a CPU")
    ev = d["evaluation"]
    if ev["helpfulness_judge"] == "endpoint":
        judge = ev["judge_model"] or d["generation"]["model"] or d["model"]["name"]
        c.set("evaluation.helpfulness_judge", "pool", "no endpoint is called: the pool grades with the same prompt "
                                                      "and parser")
        c.set("evaluation.helpfulness_model", judge, "the judge's stand-in grades helpfulness")
    else:
        small, family = stand_in_model(ev["helpfulness_model"])
        if family:
            c.set("evaluation.helpfulness_model", small, family)


def replace_hardware(c: Changes) -> None:
    c.set("model.dtype", "float32", "CPUs compute in float32")
    c.set("model.quantization", "none", "8-bit loading (bitsandbytes) needs a CUDA GPU")
    for key, value in (("gpus_per_client", 0.0), ("engine", "torch"), ("zero_stage", 0), ("offload", False),
                       ("world_size", 1)):
        c.set(f"trainer.{key}", value, "trainers on CPUs")
    for key, value in (("backend", "hf"), ("gpus_per_replica", 0.0), ("dtype", "auto"), ("replicas", 1),
                       ("cpus_per_replica", 1), ("enforce_eager", True)):
        c.set(f"generation.{key}", value, "HF generation on CPUs: the rehearsal checks the pipeline, not vLLM")
    c.set("cluster.address", None, "a local Ray on this machine")
    c.set("cluster.num_trainers", 0, "as many trainers as this machine holds")


def replace_sizes(c: Changes) -> None:
    for (section, key), value in SIZES.items():
        if c.d[section][key] > value:
            c.set(f"{section}.{key}", value, "a few, to finish in minutes")
    if c.d["defense"]["steps"] % c.d["defense"]["rounds"]:
        c.set("defense.rounds", 1, "a whole number of steps per round")
    rounds = c.d["federation"]["num_rounds"]
    if c.d["evaluation"]["every_n_rounds"] > rounds:
        c.set("evaluation.every_n_rounds", rounds, "once, after the last round")
    for section, key in (("attack", "params"), ("defense", "synthesis")):
        params = c.d[section][key]
        if params.get("max_new_tokens", 0) > SYNTHESIS_TOKENS:
            c.set(f"{section}.{key}.max_new_tokens", SYNTHESIS_TOKENS, "short generated data")
    if len(c.d["seeds"]) > 1:
        c.set("seeds", [], "one seed")


def replace_hub_data(c: Changes, cfg: ExperimentConfig, mirror: Path) -> list[str]:
    """Point every hub source at ``mirror``; returns the hub sets it needs."""
    groups = {f"clients[{g.name}].dataset": f"clients.{i}.dataset" for i, g in enumerate(cfg.clients)}
    needed = []
    for ref in data_fields(cfg):
        if on_hub(ref.source, ref.args):
            c.set(f"{groups.get(ref.field, ref.field)}_args.mirror", str(mirror),
                  f"a local copy of {hub_set(ref.source)} in its hub columns")
            needed.append(hub_set(ref.source))
    return sorted(set(needed))


def rehearsal_config(cfg: ExperimentConfig, mirror: Path) -> tuple[ExperimentConfig, list[str], list[str]]:
    """(the rehearsal's config, the changes as lines, the hub sets whose stand-ins go in ``mirror``)."""
    c = Changes(to_dict(cfg))
    replace_models(c)
    replace_hardware(c)
    replace_sizes(c)
    needed = replace_hub_data(c, cfg, mirror)
    c.set("output.name", f"{cfg.output.name}-rehearsal", "kept apart from real runs")
    slots = generation_reserve(from_yaml_text(yaml.safe_dump(c.d, sort_keys=False)))[0]
    cores = os.cpu_count() or 1
    if slots > cores and c.d["cluster"]["num_cpus"] < slots:
        c.set("cluster.num_cpus", int(slots), f"a CPU slot for each of the pool's {slots:g} models on {cores} "
                                              "cores: generation and training take turns")
    return from_yaml_text(yaml.safe_dump(c.d, sort_keys=False)), c.lines, needed
