"""Reward-model score of (prompt, answer) pairs (RM in docs/method.md#metrics: OpenAssistant/reward-model-
deberta-v3-large-v2), with any Hugging Face sequence-classification model whose first logit is the reward."""

from __future__ import annotations

import torch


def reward_scores(model_name: str, instructions: list[str], responses: list[str], batch_size: int = 16,
                  trust_remote_code: bool = False, cache_dir: str = "~/.cache/fedsafe") -> list[float]:
    """``model_name``: a hub id, a folder or a builtin name (built under ``cache_dir`` if needed)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedsafe.models.builtin import resolve_model_path
    from fedsafe.specs import ModelConfig

    model_name = resolve_model_path(ModelConfig(name=model_name, cache_dir=cache_dir))

    tokenizer = AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(instructions), batch_size):
            batch = tokenizer(instructions[i:i + batch_size], responses[i:i + batch_size], padding=True,
                              truncation=True, max_length=512, return_tensors="pt").to(device)
            scores += model(**batch).logits[:, 0].float().cpu().tolist()
    return scores
