"""Small stand-ins for the paper's models, for the rehearsal (``fedsafe.rehearsal``) of a GPU config on a CPU.

``smollm2-135m-instruct-mistral``: SmolLM2-135M-Instruct's weights in a Mistral model (Mistral's
architecture is Llama's plus a sliding window, left off here), an instruct model of the Mistral family
that follows the paper's generation prompts, for Mistral-7B-Instruct and MD-Judge (a Mistral fine-tune).
``tiny-reward-deberta``: a 2-layer DeBERTa-v2 sequence classifier with one output (random weights, the
tiny Llama's tokenizer), for the reward model (OpenAssistant's DeBERTa-v3 reward model).
"""

from __future__ import annotations

from pathlib import Path

from fedsafe.models.smollm2 import copy_weights

LLAMA_TO_MISTRAL = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                    "rope_theta", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def build_mistral_from_llama(target: Path, base: str) -> None:
    """The Llama model in folder ``base`` as a ``MistralForCausalLM`` (same weights, no sliding window)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    llama = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    source = llama.config.to_dict()
    config = MistralConfig(**{k: source[k] for k in LLAMA_TO_MISTRAL if source.get(k) is not None},
                           sliding_window=None)
    mistral = MistralForCausalLM(config)
    copy_weights(mistral, llama.state_dict(), "Llama -> Mistral")
    if config.tie_word_embeddings:
        mistral.tie_weights()
    mistral.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)


def build_tiny_reward(target: Path, base: str, seed: int = 0) -> None:
    """A random 2-layer DeBERTa-v2 reward model (one logit) with the tokenizer of folder ``base``."""
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=512, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    DebertaV2ForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
