"""Local supervised fine-tuning of a LoRA adapter: small functions, no Ray, no I/O.

As in docs/method.md#federated-setup: each round a fresh AdamW, a learning rate constant inside the round
and cosine over rounds, ``local_steps`` optimizer steps of ``batch_size`` examples each, loss on response
tokens only.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

from fedsafe.training.template import IGNORE_INDEX, collate, encode_example


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """OpenFedLLM's schedule: ``min_lr + (lr - min_lr) * (1 + cos(pi * step / total)) / 2``."""
    if total <= 0 or not 0 <= step <= total:
        raise ValueError(f"step must be in [0, total]; got step={step}, total={total}")
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * step / total))


def epoch_order(num_records: int, total: int, seed: int) -> list[int]:
    """``total`` record indices drawn epoch by epoch (each epoch a fresh permutation)."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < total:
        epoch = list(range(num_records))
        rng.shuffle(epoch)
        order.extend(epoch)
    return order[:total]


def encode_batches(tokenizer, records: list[dict], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Records in order, cut into batches; records whose response is truncated away are skipped (all of
    them: no batch)."""
    encoded = [e for e in (encode_example(tokenizer, r, max_length) for r in records) if e is not None]
    return [collate(encoded[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(encoded), batch_size)]


def make_batches(tokenizer, records: list[dict], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """``encode_batches``, at least one: training on nothing is a configuration error."""
    batches = encode_batches(tokenizer, records, batch_size, max_length)
    if not batches:
        raise ValueError(f"no record keeps a response token within train.max_length={max_length}; raise it")
    return batches


def shard_rows(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s contiguous slice of a batch's rows (possibly empty)."""
    rows = batch["input_ids"].shape[0]
    start, stop = rows * rank // world_size, rows * (rank + 1) // world_size
    return {k: v[start:stop] for k, v in batch.items()}


def response_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Response tokens the loss counts (labels shifted by one, as the causal LM loss does)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def summed_token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy of the response tokens of ``batch`` (labels shifted by one, as the causal LM loss
    does). The output layer runs only from the first position that predicts a response token in any row
    (``logits_to_keep``): over a 49k-token vocabulary it is a fifth of a small model's compute, and prompt
    positions carry no loss."""
    labels = batch["labels"][:, 1:]
    start = int((labels != IGNORE_INDEX).any(dim=0).int().argmax())
    width = batch["input_ids"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=width - start).logits[:, :-1]  # positions start .. width-2
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, start:].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def rank_loss(model, batch: dict[str, torch.Tensor], rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of a batch's loss, scaled so that the mean of the ranks' gradients (what a
    data-parallel all-reduce computes) is the gradient of the whole batch's mean token loss. One rank:
    the mean loss per response token."""
    if world_size == 1:
        return summed_token_loss(model, batch) / response_tokens(batch)
    part = shard_rows(batch, rank, world_size)
    weight = float(world_size)
    if part["input_ids"].shape[0] == 0:  # fewer rows than ranks: a zero loss keeps the collectives in step
        part, weight = shard_rows(batch, 0, batch["input_ids"].shape[0]), 0.0
    return summed_token_loss(model, part) / response_tokens(batch) * weight


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    """The whole batch's loss from the ranks' scaled shares (see ``rank_loss``)."""
    value = value.detach().clone()
    if world_size > 1:
        torch.distributed.all_reduce(value)
        value /= world_size
    return float(value)


def anchor_penalty(params: list[torch.Tensor], anchor: list[torch.Tensor], weight: float) -> torch.Tensor:
    """``weight / 2 * sum ||p - a||^2`` over the trainable ``params`` and their ``anchor`` values (the stealth
    term of constrained training: the squared distance of the local update from a benign estimate)."""
    return 0.5 * weight * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (the first ``ModuleList`` named ``layers``, ``h`` or ``blocks``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks"):
            return list(module)
    raise ValueError("perturbation-aware training needs the model's decoder layers; found no ModuleList named "
                     "layers, h or blocks")


@contextlib.contextmanager
def hidden_states(layers: list[torch.nn.Module], captured: list | None = None,
                  added: list[torch.Tensor] | None = None):
    """While open: each layer's output hidden states are appended to ``captured`` and/or have
    ``added[i]`` added (layer i)."""

    def hook(i):
        def fn(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if added is not None:
                hidden = hidden + added[i]
            if captured is not None:
                captured.append(hidden)
            if added is None:
                return None
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def perturbations(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Vaccine's hidden-state perturbation: ``rho * g_l / ||g||``, ``||g||`` over every layer's gradient
    together (the worst small perturbation to first order). Pure."""
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) + 1e-12
    return [(rho * g / norm).detach() for g in grads]


def perturbed_loss(model, batch: dict[str, torch.Tensor], rho: float, rank: int = 0,
                   world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss under the worst hidden-state perturbation of size ``rho``, the plain loss): the objective of
    Vaccine (Huang et al. 2024, "Vaccine: Perturbation-aware Alignment for Large Language Models against
    Harmful Fine-tuning"). A first pass finds each decoder layer's loss gradient with respect to its output
    hidden states; the second pass adds ``perturbations`` of them to those outputs."""
    layers, captured = decoder_layers(model), []
    with hidden_states(layers, captured=captured):
        plain = rank_loss(model, batch, rank, world_size)
    grads = torch.autograd.grad(plain, captured)
    with hidden_states(layers, added=perturbations(list(grads), rho)):
        return rank_loss(model, batch, rank, world_size), plain.detach()


def train_steps(model, batches: list[dict[str, torch.Tensor]], lrs: list[float], weight_decay: float,
                seed: int, rank: int = 0, world_size: int = 1, on_step=None,
                anchor: list[torch.Tensor] | None = None, anchor_weight: float = 0.0, rho: float = 0.0) -> list[float]:
    """One optimizer step per batch with a fresh AdamW; ``lrs[i]`` is the rate of step i. Returns losses
    (the language-modelling loss alone). With ``world_size`` > 1 (an initialized torch.distributed group)
    each rank takes its slice of every batch and the gradients are averaged over the group before each
    step. ``anchor``: one tensor per trainable parameter; ``anchor_penalty`` is added to what is minimised.
    ``rho`` > 0: the step minimises ``perturbed_loss`` (each rank perturbs by its own slice's gradient).
    ``on_step(loss)`` is called after each step (a progress bar)."""
    if len(lrs) != len(batches):
        raise ValueError(f"need one learning rate per batch, got {len(lrs)} for {len(batches)} batches")
    torch.manual_seed(seed)  # LoRA dropout
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lrs[0], weight_decay=weight_decay)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for batch, lr in zip(batches, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(device) for k, v in batch.items()}
        if rho > 0:
            objective, loss = perturbed_loss(model, batch, rho, rank, world_size)
        else:
            objective = loss = rank_loss(model, batch, rank, world_size)
        if anchor is not None and anchor_weight > 0:
            objective = objective + anchor_penalty(params, anchor, anchor_weight)
        objective.backward()
        if world_size > 1:
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world_size
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(mean_over_ranks(loss, world_size))
        if on_step is not None:
            on_step(losses[-1])
    model.eval()
    return losses


def response_loss(model, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Summed cross-entropy and number of the response tokens over ``batches`` (no gradient): the
    helpfulness proxy on held-out benign pairs is their ratio, the mean loss per response token (tokens
    weigh the same whatever batch, or trainer, they fall in)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            total += float(summed_token_loss(model, batch))
            count += response_tokens(batch)
    return total, count
