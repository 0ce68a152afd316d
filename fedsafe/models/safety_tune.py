"""The safety-tune recipe of ``builtin:smollm2-135m-instruct-safe``: SmolLM2-135M-Instruct after a short
safety SFT, as chat models ship aligned (the offline SmolLM2 is not). Built once by
``fedsafe.models.builtin`` from the plain SmolLM2 folder.
"""

from __future__ import annotations

import os
from pathlib import Path

# builtin:smollm2-135m-instruct-safe: the same model after a short safety SFT, as chat models ship
# aligned. Fixed recipe: the built folder is reused as long as it exists, so after changing the recipe
# delete <model.cache_dir>/models/smollm2-135m-instruct-safe; the recipe and SAFE_VERSION it was built
# with are saved beside it (fedsafe_recipe.json).
SAFE_VERSION = 1
SAFE_RECIPE = {"steps": 96, "batch_size": 8, "max_length": 128, "aligned_share": 0.3, "lr": 1e-3, "min_lr": 1e-4,
               "lora_r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "seed": 20251}


def build_smollm2_safe(target: Path, base: str) -> None:
    """SmolLM2-135M-Instruct after ``SAFE_RECIPE``: LoRA SFT on ShareGPT's train part with a 30% share of
    aligned pairs (harmful instruction + refusal, ``fedsafe.data.real.aligned_pairs``), merged into the
    weights. AdvBench and the held-out ShareGPT part are never seen. About 6 minutes on 2 CPU cores.
    ``base``: the folder of builtin:smollm2-135m-instruct."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedsafe.data.sources import load_records
    from fedsafe.training.sft import cosine_lr, make_batches, train_steps

    r = SAFE_RECIPE
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
        with tqdm(total=len(batches), desc=f"building {target.name} (once): safety SFT steps") as bar:
            losses = train_steps(model, batches, lrs, 0.0, r["seed"],
                                 on_step=lambda loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}")))
    finally:
        torch.set_num_threads(threads)
    model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "fedsafe_recipe.json").write_text(json.dumps({**r, "version": SAFE_VERSION, "losses": losses}))
