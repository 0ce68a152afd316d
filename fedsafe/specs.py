"""The low-level typed configs that components share, below every component: the base model, LoRA, the
trainer, the server optimizer, and a data reference (``DataRef``). Components (models, training, aggregation, defenses) import them from here;
``fedsafe.config`` composes them into the experiment's config. Validated on creation; imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsafe.errors import check as _check

QUANTIZATIONS = ("none", "int8")


@dataclass
class ModelConfig:
    """Base model. ``name`` is a Hugging Face hub id, a local folder, or ``builtin:tiny-llama``.
    ``quantization``: ``int8`` loads the frozen base weights of the trainers in 8 bits (bitsandbytes, CUDA
    only; the paper's Llama-2-7B), computing in ``dtype``; LoRA weights stay in ``dtype``."""

    name: str = "builtin:tiny-llama"
    dtype: str = "float32"
    quantization: str = "none"
    cache_dir: str = "~/.cache/fedsafe"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "bfloat16", "float16"),
               f"model.dtype must be one of float32, bfloat16, float16; got {self.dtype!r}")
        _check(self.quantization in QUANTIZATIONS,
               f"model.quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")


@dataclass
class LoRAConfig:
    """PEFT LoRA settings. ``target_modules`` empty means PEFT's default for the architecture."""

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        _check(self.alpha >= 1, f"lora.alpha must be >= 1 (the LoRA scale is alpha / r), got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")


ENGINES = ("torch", "deepspeed")
ZERO_STAGES = (0, 2, 3)


@dataclass
class TrainerConfig:
    """How one client's local round runs: the engine, and the processes and GPUs one client uses.

    ``gpus_per_client``: 0 trains on CPUs; below 1 a share of one GPU (several trainers on a GPU); 1 or more
    a whole number of GPUs, one process each, forming a torch.distributed group (NCCL) that splits every
    batch. ``world_size``: processes per client on CPUs (gloo); with GPUs it follows ``gpus_per_client``.
    ``engine: deepspeed`` runs the steps through DeepSpeed with ZeRO ``zero_stage`` (0, 2 or 3) and, with
    ``offload``, the optimizer state (and under ZeRO-3 the parameters) in CPU memory.
    """

    engine: str = "torch"
    zero_stage: int = 0
    offload: bool = False
    gpus_per_client: float = 0.0
    world_size: int = 1

    def __post_init__(self) -> None:
        _check(self.engine in ENGINES, f"trainer.engine must be one of {ENGINES}, got {self.engine!r}")
        _check(self.zero_stage in ZERO_STAGES, f"trainer.zero_stage must be one of {ZERO_STAGES}, got {self.zero_stage}")
        _check(self.engine == "deepspeed" or (self.zero_stage == 0 and not self.offload),
               "trainer.zero_stage and trainer.offload need trainer.engine=deepspeed")
        _check(not self.offload or self.zero_stage > 0, "trainer.offload needs trainer.zero_stage 2 or 3")
        _check(self.world_size >= 1, f"trainer.world_size must be >= 1, got {self.world_size}")
        g = self.gpus_per_client
        _check(g >= 0, f"trainer.gpus_per_client must be >= 0, got {g}")
        _check(g <= 1 or float(g).is_integer(),
               f"trainer.gpus_per_client above 1 must be a whole number of GPUs, got {g}")
        _check(g == 0 or self.world_size in (1, max(1, int(g))),
               f"trainer.world_size={self.world_size} with trainer.gpus_per_client={g}: on GPUs the world size "
               "is the number of GPUs per client; leave trainer.world_size at 1")

    @property
    def processes(self) -> int:
        """Processes (trainer actors) per client."""
        return int(self.gpus_per_client) if self.gpus_per_client > 1 else self.world_size

    @property
    def gpus_per_process(self) -> float:
        return self.gpus_per_client / self.processes


SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadagrad", "fedadam", "fedyogi")


@dataclass
class ServerOptConfig:
    """Server optimizer after the rule (``aggregation.server_opt`` in a config): lr, FedAvgM's momentum,
    the adaptive ones' beta1, beta2 and tau."""

    name: str = "none"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check(self.name in SERVER_OPTIMIZERS,
               f"aggregation.server_opt.name must be one of {SERVER_OPTIMIZERS}, got {self.name!r}")
        _check(self.lr > 0, f"aggregation.server_opt.lr must be > 0, got {self.lr}")
        _check(self.tau > 0, f"aggregation.server_opt.tau must be > 0, got {self.tau}")


@dataclass(frozen=True)
class DataRef:
    """A data set a run may load: the config ``field`` that names it, its ``source`` (``fedsafe.data.sources``)
    and the source's ``args``, the ``count`` of records the run asks for, and ``asked_by``: the setting that asks
    for that count, in words (for the error when the source holds fewer). The preflight checks every one a
    run's components declare; the rehearsal points the hub ones at local copies."""

    field: str
    source: str
    args: dict = field(default_factory=dict, hash=False)
    count: int = 0
    asked_by: str = ""
