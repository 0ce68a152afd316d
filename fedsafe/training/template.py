"""The alpaca template (docs/method.md#federated-setup) and tokenisation with the loss on the response only.

Prompt and response are tokenised separately and concatenated, so the prompt tokens seen in training
are exactly those given to ``generate`` at evaluation.
"""

from __future__ import annotations

import torch

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction} \n\n### Response:"
)  # the authors' text, with its space after the instruction; the space after "Response:" starts the response
IGNORE_INDEX = -100


def format_prompt(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction)


def encode_prompt(tokenizer, instruction: str) -> list[int]:
    return tokenizer(format_prompt(instruction))["input_ids"]


def encode_example(tokenizer, record: dict, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for one record; labels are IGNORE_INDEX on the prompt. ``None`` when
    truncation to ``max_length`` leaves no response token to learn from."""
    prompt = encode_prompt(tokenizer, record["instruction"])
    response = tokenizer(" " + record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return input_ids, labels


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels, each [batch, length]."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
