"""The GPU path without a GPU: the memory estimate against published figures, the plan that states it and
stops when it does not fit, gradient checkpointing as a setting, what each actor sees of the GPUs and of
the driver's environment, and a worker's failure to load as one line. On Ray's local test cluster with
declared GPUs (Ray assigns the IDs, no CUDA needed): the paper plan's trainer groups and vLLM replicas on
disjoint GPUs, coordinators on none, the ranks of a 2-GPU client seeing both."""

from __future__ import annotations

import pytest

from fedsafe.cluster import memory, runtime
from fedsafe.cluster.plan import make_plan
from fedsafe.config import ConfigError, load_config
from tests.conftest import ROOT, SMOKE, run_scenario

PAPER_GPU = ROOT / "configs" / "paper_gpu.yaml"
LLAMA2_7B_CONFIG = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
PAPER_STEP = dict(batch_size=16, max_length=512, lora_rank=32, lora_targets=["q_proj", "v_proj"])


def test_shape_from_a_config_matches_the_published_parameter_count():
    shape = memory.shape_from_config(LLAMA2_7B_CONFIG)
    assert shape.params == pytest.approx(6.74e9, rel=0.01)  # "Llama 2 7B": 6.74B parameters
    assert memory.shape_from_config({"hidden_size": 8}) is None
    mistral = memory.shape_from_config({**LLAMA2_7B_CONFIG, "intermediate_size": 14336, "num_key_value_heads": 8})
    assert mistral.kv == 1024 and mistral.params == pytest.approx(7.24e9, rel=0.01)  # Mistral 7B: 7.24B


def test_memory_estimate_against_published_and_measured_figures():
    shape = memory.model_shape("meta-llama/Llama-2-7b-hf")
    bf16 = memory.trainer_memory(shape, dtype="bfloat16", quantization="none", checkpointing=True, **PAPER_STEP)
    assert bf16.weights == pytest.approx(6.74e9 * 2 / 2 ** 30, rel=0.01)  # 13.5 GB in 16 bits
    int8 = memory.trainer_memory(shape, dtype="bfloat16", quantization="int8", checkpointing=True, **PAPER_STEP)
    no_ckpt = memory.trainer_memory(shape, dtype="bfloat16", quantization="int8", checkpointing=False, **PAPER_STEP)
    # the authors' setting (8 bits, 16 x 512, checkpointing) trains on one 24 GB GPU; without checkpointing
    # the activations alone are tens of GiB
    assert int8.total < 22 and no_ckpt.activations > 30 and no_ckpt.total > 40
    assert int8.weights < bf16.weights / 1.7  # 8-bit linear layers
    # measured on an H200 (docs/gpu.md: torch.cuda.max_memory_allocated of two steps, which has no CUDA context)
    measured = {("none", True): 16.69, ("none", False): 56.42, ("int8", True): 15.40}
    for (quantization, checkpointing), peak in measured.items():
        est = memory.trainer_memory(shape, dtype="bfloat16", quantization=quantization, checkpointing=checkpointing,
                                    **PAPER_STEP)
        assert est.total - est.context == pytest.approx(peak, rel=0.1), (quantization, checkpointing)
    # vLLM's KV cache for Llama-2-7B: 2 x 32 layers x 4096 x 2 bytes = 0.5 MiB per token
    r = memory.replica_memory(shape, max_model_len=4096)
    assert r.kv_cache == pytest.approx(4096 * 0.5 / 1024) and r.weights == pytest.approx(6.74e9 * 2 / 2 ** 30)
    assert memory.replica_memory(shape, max_model_len=4096, tensor_parallel=2).weights == pytest.approx(r.weights / 2)


def test_the_plan_states_memory_and_stops_where_it_does_not_fit():
    cfg = load_config(PAPER_GPU)
    plan = make_plan(cfg, [{"CPU": 96, "GPU": 8, "gpu_memory_gib": 80}] * 4, 3)
    text = plan.describe()
    assert "GPU memory per trainer process" in text and "checkpointing on" in text and "fits" in text
    assert "GPU memory per vLLM replica of mistralai/Mistral-7B-Instruct-v0.2: reserves 0.85" in text
    with pytest.raises(ConfigError, match="needs about .* GiB per process .*train.gradient_checkpointing"):
        make_plan(load_config(PAPER_GPU, ["train.gradient_checkpointing=false"]),
                  [{"CPU": 96, "GPU": 8, "gpu_memory_gib": 40}] * 4, 3)
    with pytest.raises(ConfigError, match="vLLM replica of .* needs at least"):
        make_plan(cfg, [{"CPU": 96, "GPU": 8, "gpu_memory_gib": 16}] * 4, 3)
    unknown = make_plan(cfg, [{"CPU": 96, "GPU": 8}] * 4, 3)  # memory not given: stated, not checked
    assert "fits" not in unknown.describe() and "GPU memory per trainer process" in unknown.describe()


def test_dry_run_with_gpu_memory_passes_or_stops_with_one_line(capsys):
    from fedsafe.cli import main

    assert main(["run", "--config", str(PAPER_GPU), "--dry-run", "--nodes", "4x96:8:80G"]) == 0
    out = capsys.readouterr().out
    assert "gpu_memory_gib': 80.0" in out and "GPU memory per trainer process (estimate" in out
    assert main(["run", "--config", str(PAPER_GPU), "--dry-run", "--nodes", "4x96:8:16G"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert "GiB" in captured.err
    for bad in ("4x96:8:lots", "4x96:8:-1G", "0x96:8", "4x96:nan"):
        assert main(["run", "--config", str(PAPER_GPU), "--dry-run", "--nodes", bad]) == 2


def test_checkpointing_is_a_training_setting_on_in_the_paper_configs():
    assert load_config(PAPER_GPU).train.gradient_checkpointing
    assert load_config(ROOT / "configs" / "paper_gpu_beavertails.yaml").train.gradient_checkpointing
    assert not load_config(SMOKE).train.gradient_checkpointing


def test_a_checkpointed_model_trains_to_the_same_loss(model_cache):
    import torch

    from fedsafe.actors.trainer import Trainer
    from fedsafe.config import LoRAConfig, ModelConfig
    from fedsafe.data import toy
    from fedsafe.updates import ClientTask

    task = ClientTask(0, 0, "benign", toy.normal_records(8, 0), [1e-3, 1e-3], 4, 64, 0.0, 0)
    lora = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    runs = []
    for checkpointing in (False, True):
        trainer = Trainer(ModelConfig(cache_dir=model_cache), lora, 0, gradient_checkpointing=checkpointing)
        trainer.start()
        assert trainer._model.base_model.model.is_gradient_checkpointing == checkpointing
        update, metrics = trainer.train(trainer.initial_adapter().vector, task)
        runs.append((update.delta, metrics.loss))
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-6)  # recomputation changes nothing but memory


def test_actors_without_a_gpu_see_none_and_every_worker_gets_the_hub_settings():
    assert runtime.actor_env(0)["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in runtime.actor_env(1)["env_vars"]
    env = runtime.worker_env({"HF_TOKEN": "hf_secret", "HF_HOME": "/models", "AWS_SECRET_ACCESS_KEY": "no", "HF_ENDPOINT": ""})
    assert env["HF_TOKEN"] == "hf_secret" and env["HF_HOME"] == "/models"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_ENDPOINT" not in env  # only hub settings, only when set
    assert env["TORCH_EXTENSIONS_DIR"] == runtime.EXTENSIONS_DIR and "fedsafe-torch-extensions" in runtime.EXTENSIONS_DIR


@pytest.mark.parametrize("error, expected", [
    (ModuleNotFoundError("No module named 'bitsandbytes'"), "pip install 'bitsandbytes>=0.46.1'"),
    (OSError("You are trying to access a gated repo. Make sure to have access to it; 401 Client Error"), "HF_TOKEN"),
    (OSError("meta-llama/nope is not a valid model identifier listed on 'https://huggingface.co/models'"), "check model.name"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "train.gradient_checkpointing=true"),
    (RuntimeError("The NVIDIA driver on your system is too old"), "R580"),
    (ValueError("model.quantization=int8 loads the base model with bitsandbytes on a CUDA GPU, and this machine has "
                "none"), "sees no GPU"),
    (OSError("We couldn't connect to 'https://huggingface.co' to load the files"), "cannot reach the hub"),
    (ValueError("something else"), "the worker's log"),
])
def test_a_setup_failure_names_the_cause_and_the_fix(error, expected):
    line = runtime.setup_failure(error, "a trainer on 10.0.0.5", "meta-llama/Llama-2-7b-hf")
    assert line.startswith("a trainer on 10.0.0.5 could not load meta-llama/Llama-2-7b-hf: ") and expected in line
    assert "\n" not in line


def test_the_cause_of_an_actor_that_died_in_its_constructor():
    text = ("The actor died because of an error raised in its creation task, ray::Generator.__init__() (pid=12, "
            "ip=10.0.0.7, actor_id=ab)\n  File \"x.py\", line 3, in __init__\nImportError: No module named 'vllm'")
    err = RuntimeError(text)
    assert runtime.cause_line(err) == "ImportError: No module named 'vllm'" and runtime.failed_node(err) == "10.0.0.7"


# --- on Ray's local test cluster with declared GPUs -------------------------------------------------------

class ProbeTrainer:
    """A trainer that loads nothing: it reports what it sees of the GPUs after ``load`` and of the hub token."""

    def __init__(self, *args) -> None:
        self.local_rank = 0

    def placement(self) -> dict:
        import os

        from fedsafe.actors import placement

        return {**placement(), "local_rank": self.local_rank, "hf_token": os.environ.get("HF_TOKEN")}

    def load(self, group_gpus=None) -> bool:
        from fedsafe.actors.trainer import Trainer

        Trainer.see_group(self, group_gpus)  # the real trainer's GPU view, without its model
        return True

    def address(self):
        return "127.0.0.1", 0

    def start(self, address="127.0.0.1", port=0) -> bool:
        return True

    def ready(self) -> bool:
        return True


class ProbeGenerator:
    def __init__(self, *args) -> None:
        pass

    def ready(self) -> str:
        return "bfloat16"

    def placement(self) -> dict:
        from fedsafe.actors import placement

        return placement()


@pytest.mark.integration
def test_the_paper_plan_puts_trainers_and_replicas_on_disjoint_gpus_and_coordinators_on_none(tmp_path, model_cache):
    shown = run_scenario("gpu_placement", tmp_path, model_cache)  # its own process: a driver joins one Ray
    (plan, trainers, replicas, coord), (plan2, trainers2, _, _) = shown["seen"]
    used = [(p["node_id"], g) for group in trainers for p in group for g in p["gpus"]]
    used += [(p["node_id"], g) for p in replicas for g in p["gpus"]]
    assert len(used) == len(set(used)) == plan["trainers"] + plan["generators"] == 7  # disjoint
    assert all(len(p["gpus"]) == 1 for group in trainers for p in group)
    assert coord["gpus"] == [] and coord["visible"] == "" and coord["device"] == "cpu"
    assert all(p["hf_token"] == "hf_test_token" for group in trainers for p in group)  # reaches every worker
    # a 2-GPU client: both ranks see both of the group's GPUs and use their own
    assert plan2["group_size"] == 2
    for group in trainers2:
        ids = [p["gpus"][0] for p in group]
        assert all(p["visible"] == ",".join(ids) for p in group) and [p["local_rank"] for p in group] == [0, 1]


@pytest.mark.integration
def test_a_model_a_worker_cannot_load_ends_the_run_with_one_line(ray_cluster, model_cache, tmp_path, capsys):
    # a model folder whose config the driver reads but whose weights are missing: the trainer that cannot
    # load it ends the run with one line naming the node, the model, the cause and the fix
    import shutil

    from fedsafe.cli import main
    from fedsafe.config import ModelConfig
    from fedsafe.models.builtin import resolve_model_path

    folder = tmp_path / "no-weights"
    shutil.copytree(resolve_model_path(ModelConfig(cache_dir=model_cache)), folder,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    status = main(["run", "--config", str(SMOKE), f"model.name={folder}", "generation.backend=hf",
                   f"output.root={tmp_path / 'runs'}", "output.trackers=[]"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert status == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: a trainer on ") and f"could not load {folder}: OSError" in lines[0]
    assert "check model.name" in lines[0] and "did not start" not in err
    import ray  # the failed start freed everything it reserved (the shared cluster's later tests need it)

    assert {pg["state"] for pg in ray.util.placement_group_table().values()} <= {"REMOVED"}
