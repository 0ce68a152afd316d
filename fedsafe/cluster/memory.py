"""GPU memory a run's actors need, estimated before anything starts (``fedsafe run --dry-run``). Pure.

Per trainer process: the base weights at their dtype or in 8 bits, the LoRA weights with their gradients
and AdamW state (fp32), the activations one step keeps for its backward pass (batch x length tokens, all
of every decoder layer without gradient checkpointing, with it the layers' inputs), the logits and their
fp32 copy for the loss, and the CUDA context; the activations and logits with the caching allocator's
slack (``FRAGMENTATION``). Per vLLM replica: what
vLLM reserves, ``gpu_memory_utilization`` of the GPU (weights, activations and KV cache inside it).

    shape = model_shape("meta-llama/Llama-2-7b-hf")
    trainer_memory(shape, dtype="bfloat16", quantization="int8", batch_size=16, max_length=512, lora_rank=32,
                   lora_targets=["q_proj", "v_proj"], checkpointing=True).total   # 15.7 GiB

The activation terms are per token and layer, in bytes, for a Llama-style decoder in 16-bit (attention by
SDPA, so no s x s score matrix is kept; SwiGLU MLP): the inputs of q, k, v, o and the norms (6 h), the
attention output (h), the MLP's gate, up, activation and product (4 i), and for each LoRA target the
dropout's copy of its input (h each). Checked against published figures and a measured step in tests and
docs/gpu.md.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT_GIB = 0.8  # the CUDA context, cuBLAS workspaces and the allocator's slack of one process
FRAGMENTATION = 1.1  # the caching allocator's blocks are larger than the tensors in them


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only model."""

    params: float  # all parameters
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_hidden: int | None = None  # k and v projections' width (grouped-query attention); default hidden

    @property
    def kv(self) -> int:
        return self.kv_hidden or self.hidden

    @property
    def embedding_params(self) -> float:
        """Input embedding and output layer: 16-bit even when the rest is in 8 bits."""
        return 2.0 * self.vocab * self.hidden


# the hub models the configs name (their config.json); any other model's shape is read from its config
KNOWN_SHAPES = {
    "meta-llama/Llama-2-7b-hf": ModelShape(6.74e9, 4096, 32, 11008, 32000),
    "meta-llama/Llama-2-13b-hf": ModelShape(13.0e9, 5120, 40, 13824, 32000),
    "mistralai/Mistral-7B-v0.1": ModelShape(7.24e9, 4096, 32, 14336, 32000, kv_hidden=1024),
    "mistralai/Mistral-7B-Instruct-v0.2": ModelShape(7.24e9, 4096, 32, 14336, 32000, kv_hidden=1024),
    "OpenSafetyLab/MD-Judge-v0.1": ModelShape(7.24e9, 4096, 32, 14336, 32000, kv_hidden=1024),
    "OpenAssistant/reward-model-deberta-v3-large-v2": ModelShape(4.35e8, 1024, 24, 4096, 128100),
}


def shape_from_config(config: dict) -> ModelShape | None:
    """A ``ModelShape`` from a Hugging Face ``config.json`` (Llama-style keys), or None where keys are missing."""
    try:
        h, n, i, v = (int(config[k]) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    except (KeyError, TypeError, ValueError):
        return None
    heads = int(config.get("num_attention_heads") or 1)
    kv = int(config.get("num_key_value_heads") or heads) * (h // heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    params = n * per_layer + v * h * (1 if config.get("tie_word_embeddings") else 2) + h
    return ModelShape(float(params), h, n, i, v, kv_hidden=kv)


def model_shape(name: str, config: dict | None = None) -> ModelShape | None:
    """The shape of ``name``: from its ``config`` (a parsed config.json) when given, else the known table."""
    if config is not None:
        found = shape_from_config(config)
        if found is not None:
            return found
    return KNOWN_SHAPES.get(name)


def lora_params(shape: ModelShape, rank: int, targets: list[str]) -> float:
    """Trainable LoRA parameters: r x (in + out) per target module and layer."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv
    sizes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
             "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return float(sum(rank * sum(sizes.get(t, (h, h))) for t in targets) * shape.layers)


def activation_bytes_per_token_layer(shape: ModelShape, lora_targets: int) -> float:
    """Bytes of activations one decoder layer keeps per token for the backward pass (16-bit)."""
    h, i = shape.hidden, shape.intermediate
    return 2.0 * (7 * h + 4 * i + lora_targets * h)


@dataclass(frozen=True)
class TrainerMemory:
    weights: float
    lora: float
    activations: float
    logits: float
    context: float

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.activations + self.logits + self.context


def trainer_memory(shape: ModelShape, *, dtype: str, quantization: str, batch_size: int, max_length: int,
                   lora_rank: int, lora_targets: list[str], checkpointing: bool, processes: int = 1,
                   zero_stage: int = 0) -> TrainerMemory:
    """One trainer process's GPU memory in GiB (``TrainerMemory``): a client's batch is split over its
    ``processes``; under ZeRO-3 its base weights too. Measured on an H200 (docs/gpu.md, Llama-2-7B shape,
    16 x 512): 16-bit 16.7 GiB with checkpointing and 56.4 without, 8 bits 15.4 with; these estimates are
    within 6% of each (without the CUDA context, which the allocator does not count)."""
    int8 = quantization == "int8"
    if int8:  # 8-bit linear layers; PEFT's k-bit preparation casts the rest to fp32
        weights = shape.embedding_params * 4 + (shape.params - shape.embedding_params) * 1.0
    else:
        weights = shape.params * DTYPE_BYTES[dtype]
    if zero_stage == 3:
        weights /= processes
    lora = lora_params(shape, lora_rank, lora_targets) * 16  # fp32 weight, gradient and AdamW's two moments
    tokens = batch_size * max_length / processes
    # k-bit preparation casts the layers left out of 8 bits (embedding, norms, output) to fp32: the residual
    # stream and the logits are then fp32, else 16-bit
    stream = 4 if int8 else 2
    # the logits, their fp32 copy for the loss and its gradient
    logits = tokens * shape.vocab * (stream + 4 + 4)
    if checkpointing:  # the layers' inputs and the loss's logits at the start of the backward pass
        activations = shape.layers * tokens * shape.hidden * stream
    else:
        per_layer = activation_bytes_per_token_layer(shape, len(lora_targets)) * tokens * stream / 2
        activations = shape.layers * per_layer
    gib = lambda b: b / GIB  # noqa: E731
    return TrainerMemory(gib(weights), gib(lora), gib(activations * FRAGMENTATION), gib(logits * FRAGMENTATION),
                         CUDA_CONTEXT_GIB)


def replica_gib(gpu_gib: float, utilization: float) -> float:
    """What one vLLM replica reserves on each of its GPUs: ``gpu_memory_utilization`` of the GPU's memory
    (whatever share of the GPU Ray gave it)."""
    return gpu_gib * utilization


VLLM_WORKING_GIB = 1.5  # vLLM's own activations, CUDA graphs and sampler buffers beside weights and KV cache


@dataclass(frozen=True)
class ReplicaMemory:
    weights: float
    kv_cache: float  # one sequence of max_model_len tokens: the least vLLM needs to start
    working: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.working


def replica_memory(shape: ModelShape, *, max_model_len: int, tensor_parallel: int = 1) -> ReplicaMemory:
    """What one vLLM replica needs per GPU at least (GiB): 16-bit weights and one full-length sequence's KV
    cache, split over ``tensor_parallel`` GPUs, and its working memory."""
    weights = shape.params * 2 / tensor_parallel
    kv = 2 * shape.layers * shape.kv * max_model_len * 2 / tensor_parallel
    return ReplicaMemory(weights / GIB, kv / GIB, VLLM_WORKING_GIB)
