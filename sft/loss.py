"""Causal-LM loss from the last hidden states: chunked cross-entropy, per-sample sums, token or sample reduction.

Typical use (the Trainer does this in ``sft.train.LongLoRATrainer.compute_loss``)::

    parts = loss_parts(hidden, lm_head, labels=labels, position_ids=position_ids)   # per-sample sums and counts
    loss = reduce_loss(parts, "token", num_items=global_supervised_tokens)           # or "sample", global samples

**Chunked cross-entropy** (issue 13). The logits ``(tokens, vocabulary)`` are the largest tensor of a long-context step
(16k tokens x 49k SmolLM2 vocabulary x 4 bytes = 3.2 GB, twice that with their gradient). Here only the supervised
positions (shifted label != -100) go through the LM head at all, in chunks of ``chunk_size`` tokens; each chunk is
recomputed in the backward pass (``torch.utils.checkpoint``), so at most one chunk's logits exist at any time. The head
is called as a module, so whatever peft made of it (LoRA layers, a trainable ``modules_to_save`` copy whose weight is
tied to the input embedding) gets its gradient through ordinary autograd, into the one shared tensor. Logits are cast to
float32 before the softmax and the loss is accumulated in float32, as transformers' ``ForCausalLMLoss`` does, so the
loss and every gradient equal the plain path (``chunk_size=None``: one head call over all positions).

**Samples and sums.** Samples are the runs of a row that start where ``position_ids == 0`` or do not continue the
previous position (the training batch contract: packed rows restart positions at every sample, a prefix tree's
branches continue their prefix's; padded rows count 0..len-1); the first column of every row
starts a sample too (a context-parallel slice may begin inside one). Predictions are attributed to the sample of
their input token; in a packed row the first token of a sample has label -100, so no prediction crosses a boundary.
:class:`LossParts` holds, per sample, the summed float32 token losses (differentiable) and the supervised-token count.

**Reductions** (``loss_reduction``), exact across gradient accumulation and data-parallel ranks when ``num_items`` is
the count over the whole global batch:

- ``token``: ``sum over all supervised tokens of the global batch / their number`` (``num_items`` = tokens);
- ``sample`` (LongAlign, Bai et al. 2024, "loss weighting"): every sample's own mean token loss, averaged over the
  samples of the global batch that have a supervised token (``num_items`` = samples), so a 3-token answer weighs as
  much as a 300-token one.

Context parallelism passes pre-shifted ``shift_labels`` (the label of the next token, which may live on the next
rank); it trains with the ``token`` reduction only (the config refuses ``sample`` with it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from schemas.labels import IGNORE_INDEX

#: tokens per LM-head call: 2048 x 49k vocabulary x 4 bytes = 0.4 GB of float32 logits for SmolLM2
DEFAULT_CHUNK_SIZE = 2048
Reduction = Literal["token", "sample"]
REDUCTIONS: tuple[str, ...] = ("token", "sample")


@dataclass
class LossParts:
    """Per-sample loss sums and supervised-token counts of one micro-batch.

    Attributes:
        sums: ``(S,)`` float32 (float64 for a float64 model), the summed cross-entropy of each sample's supervised
            tokens (carries the gradient).
        counts: ``(S,)`` int64, each sample's supervised tokens (0 for a sample without any, e.g. padding-only).
    """

    sums: torch.Tensor
    counts: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        """Supervised tokens of the micro-batch (0-d int64)."""
        return self.counts.sum()

    @property
    def samples(self) -> torch.Tensor:
        """Samples with at least one supervised token (0-d int64): what the ``sample`` reduction averages over."""
        return (self.counts > 0).sum()


def shift_labels_of(labels: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` labels -> ``(B, N)`` targets of each position: ``labels[:, 1:]`` then -100 (the last token of a row
    predicts nothing)."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def sample_ids(position_ids: torch.Tensor | None, shape: tuple[int, int], device=None) -> torch.Tensor:
    """``(B, N)`` int64 sample index of every token, numbered 0.. across the rows in order.

    A sample starts at every ``position_ids == 0``, wherever a position does not continue the previous one (a branch
    of a prefix tree, ``sft.tree``, continues its prefix's positions) and at the first column of every row; without
    ``position_ids`` every row is one sample.
    """
    batch, seq_len = shape
    if position_ids is None:
        starts = torch.zeros(shape, dtype=torch.bool, device=device)
    else:
        pos = position_ids[0] if position_ids.ndim == 3 else position_ids  # (k, B, N) multimodal RoPE: the first
        jumps = F.pad(torch.diff(pos, dim=-1) != 1, (1, 0), value=True)
        starts = ((pos == 0) | jumps).expand(shape).clone().to(device)
    starts[:, 0] = True
    return starts.reshape(-1).cumsum(0).sub_(1).view(batch, seq_len)


def token_losses(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                 chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Cross-entropy ``(T,)`` (float32, or float64 for a float64 head) of ``head(hidden)`` against ``targets``
    (``hidden`` ``(T, H)``, no -100).

    ``chunk_size=None``: one head call over all ``T`` positions (the plain path). Otherwise ``T`` is cut into chunks,
    each computed under non-reentrant activation checkpointing when gradients are needed, so its logits are freed
    after the forward and recomputed, one chunk at a time, in the backward pass.
    """
    if chunk_size is None or hidden.shape[0] <= chunk_size:
        return _chunk_loss(hidden, targets, head)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    losses = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        losses.append(checkpoint(_chunk_loss, h, t, head, use_reentrant=False) if recompute
                      else _chunk_loss(h, t, head))
    return torch.cat(losses)


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    logits = head(hidden)  # (T, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32, like ForCausalLMLoss
    return F.cross_entropy(logits, targets, reduction="none")


def loss_parts(hidden: torch.Tensor, head: nn.Module, *, labels: torch.Tensor | None = None,
               shift_labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> LossParts:
    """Per-sample sums and counts of the causal-LM loss of ``head(hidden)``.

    Args:
        hidden: ``(B, N, H)`` last hidden states (after the final norm).
        head: the LM head module (``model.get_output_embeddings()``; peft wrappers included).
        labels: ``(B, N)`` unshifted labels, -100 ignored (HF convention); or
        shift_labels: ``(B, N)`` the target of every position, already shifted (context parallelism).
        position_ids: ``(B, N)`` positions; 0 starts a sample (see :func:`sample_ids`).
        chunk_size: tokens per head call (None: all at once, the plain path).
    """
    if (labels is None) == (shift_labels is None):
        raise ValueError("give exactly one of labels and shift_labels")
    targets = shift_labels_of(labels) if shift_labels is None else shift_labels
    batch, seq_len = targets.shape
    if hidden.shape[:2] != (batch, seq_len):
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match labels {tuple(targets.shape)}")
    ids = sample_ids(position_ids, (batch, seq_len), targets.device)
    n_samples = int(ids[-1, -1]) + 1
    keep = targets.reshape(-1) != IGNORE_INDEX
    where = keep.nonzero().squeeze(1)  # (T,) supervised positions of the flattened batch
    flat = hidden.reshape(batch * seq_len, hidden.shape[-1])
    losses = token_losses(flat.index_select(0, where), head, targets.reshape(-1)[where], chunk_size=chunk_size)
    owner = ids.reshape(-1)[where]
    sums = torch.zeros(n_samples, dtype=losses.dtype, device=losses.device).index_add(0, owner, losses)
    counts = torch.zeros(n_samples, dtype=torch.long, device=owner.device).index_add_(0, owner, torch.ones_like(owner))
    return LossParts(sums=sums, counts=counts)


def logits_loss_parts(logits: torch.Tensor, *, labels: torch.Tensor | None = None,
                      shift_labels: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> LossParts:
    """:func:`loss_parts` for logits the model computed itself ``(B, N, V)`` (the plain path, and models whose logits
    are post-processed after the head, e.g. soft-capped)."""
    return loss_parts(logits, nn.Identity(), labels=labels, shift_labels=shift_labels, position_ids=position_ids,
                      chunk_size=None)


def reduce_loss(parts: LossParts, reduction: Reduction, *,
                num_items: torch.Tensor | float | None = None) -> torch.Tensor:
    """The scalar loss of a micro-batch as its share of the global batch's loss.

    ``num_items``: supervised tokens (``token``) or samples with a supervised token (``sample``) of the whole global
    batch (all accumulation steps, all ranks); None: this micro-batch's own. Summing the returned values over the
    micro-batches of a global batch gives the global loss.
    """
    if reduction == "token":
        total = parts.sums.sum()
        denominator = parts.tokens if num_items is None else num_items
    elif reduction == "sample":
        total = (parts.sums / parts.counts.clamp(min=1).to(parts.sums.dtype)).sum()
        denominator = parts.samples if num_items is None else num_items
    else:
        raise ValueError(f"loss reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device, total.dtype)
    return total / denominator


def output_head(model) -> nn.Module:
    """The LM head module of a (peft-wrapped) causal LM."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings: the chunked loss needs its LM head")
    return head


def causal_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                   reduction: Reduction = "token", chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                   **inputs) -> torch.Tensor:
    """The mean loss of one batch through ``model`` with the chunked loss: the decoder body in the model's own forward
    (no logits), then :func:`loss_parts`. For scripts and benchmarks; the Trainer uses ``sft.trainer``."""
    out = model(input_ids=input_ids, position_ids=position_ids, output_hidden_states=True, use_cache=False,
                logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device), **inputs)
    parts = loss_parts(out.hidden_states[-1], output_head(model), labels=labels, position_ids=position_ids,
                       chunk_size=chunk_size)
    return reduce_loss(parts, reduction)


def count_items(labels: torch.Tensor | None, position_ids: torch.Tensor | None, reduction: Reduction, *,
                shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """What ``reduce_loss`` divides by, for one micro-batch (no forward pass): supervised tokens or samples."""
    targets = shift_labels_of(labels) if shift_labels is None else shift_labels
    supervised = targets != IGNORE_INDEX
    if reduction == "token":
        return supervised.sum()
    ids = sample_ids(position_ids, tuple(targets.shape), targets.device)
    return ids[supervised].unique().numel() * torch.ones((), dtype=torch.long, device=targets.device)


__all__ = ["DEFAULT_CHUNK_SIZE", "IGNORE_INDEX", "LossParts", "REDUCTIONS", "causal_lm_loss", "count_items",
           "logits_loss_parts", "loss_parts", "output_head", "reduce_loss", "sample_ids", "shift_labels_of",
           "token_losses"]
