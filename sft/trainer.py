"""The transformers ``Trainer`` with this package's loss (``sft.loss``) and throughput metrics.

:class:`LongLoRATrainer` changes three things and nothing else:

- ``compute_loss``: the model runs its decoder body through its own (DDP-wrapped) forward, asked for no logits
  (``logits_to_keep`` an empty index) and for the last hidden states; ``sft.loss.loss_parts`` puts only the supervised
  positions through the LM head, in chunks recomputed in backward (``chunked_loss``). ``chunked_loss: false`` (and
  models whose logits are post-processed after the head, e.g. Gemma's soft-capping) take the plain path: the model
  computes all logits and the same loss is taken from them. Either way the loss is reduced as ``loss_reduction`` says.
- ``get_batch_samples``: with the micro-batches of one optimizer step it counts what the reduction divides by
  (supervised tokens, or samples with a supervised token) over the whole global batch: all accumulation steps, summed
  over the data-parallel ranks. Every micro-batch's loss is its share ``sum / global count``, times the world size
  because DDP averages gradients over ranks; so the accumulated gradient is that of the global batch in one piece.
- ``log``: every training log line gains ``tokens_per_second`` (real, non-padding input tokens of all ranks per second
  of wall time since the previous line), ``supervised_tokens`` (per optimizer step, all ranks), ``padding_fraction``
  (the share of computed tokens that are padding), and ``window_seconds`` / ``window_steps`` (the wall time and the
  optimizer steps since the previous line: a resumed run's training time adds up from them, ``sft.experiment``).
  Packed batches carry their real token count (``sft.packing.REAL_TOKENS``, removed here before the model sees the
  batch); a batch with neither that nor an ``attention_mask`` counts as unpadded.
"""
from __future__ import annotations

import time

import torch
from transformers import Trainer

from sft.loss import DEFAULT_CHUNK_SIZE, count_items, logits_loss_parts, loss_parts, output_head, reduce_loss
from sft.packing import REAL_TOKENS

#: config attributes of models that change the logits after the LM head (the chunked path would skip that step)
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class LongLoRATrainer(Trainer):
    """``Trainer`` whose loss is ``sft.loss`` (see the module docstring)."""

    # compute_loss returns each micro-batch's share of the global batch's loss: training_step must not divide it again
    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_reduction: str = "token", chunked_loss: bool = True,
                 loss_chunk_size: int = DEFAULT_CHUNK_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_reduction = loss_reduction
        self.chunked_loss = chunked_loss and not post_processes_logits(self.model)
        self.loss_chunk_size = loss_chunk_size
        self._window = _Throughput()

    # -- loss ----------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = {"labels": labels, "shift_labels": shift_labels, "position_ids": inputs.get("position_ids")}
        if self.chunked_loss:
            no_logits = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
            outputs = model(**inputs, logits_to_keep=no_logits, output_hidden_states=True, use_cache=False)
            # as the model's forward (accelerate autocasts only that): the head in bf16
            with self.accelerator.autocast():
                parts = loss_parts(outputs.hidden_states[-1], output_head(self.accelerator.unwrap_model(model)),
                                   chunk_size=self.loss_chunk_size, **targets)
        else:
            outputs = model(**inputs, use_cache=False)
            parts = logits_loss_parts(outputs.logits, **targets)
        if model.training and num_items_in_batch is not None:  # counted over the global batch by get_batch_samples
            loss = reduce_loss(parts, self.loss_reduction, num_items=num_items_in_batch)
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over the ranks
        else:  # evaluation: this batch's own mean
            loss = reduce_loss(parts, self.loss_reduction)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches or "labels" not in batches[0] and "shift_labels" not in batches[0]:
            for batch in batches:
                batch.pop(REAL_TOKENS, None)
            return batches, None
        counts = torch.stack([batch_counts(b, self.loss_reduction) for b in batches]).sum(0).to(device)
        for batch in batches:
            batch.pop(REAL_TOKENS, None)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._window.add(counts)
        return batches, counts[0]

    # -- metrics -------------------------------------------------------------------------------------------------------

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._window.steps:
            logs = {**logs, **self._window.metrics()}
        return super().log(logs, *args, **kwargs)


def batch_counts(batch: dict, reduction: str) -> torch.Tensor:
    """``[items the reduction divides by, supervised tokens, real input tokens, computed tokens]`` of a batch."""
    labels, shift_labels = batch.get("labels"), batch.get("shift_labels")
    position_ids = batch.get("position_ids")
    supervised = count_items(labels, position_ids, "token", shift_labels=shift_labels)
    items = supervised if reduction == "token" else count_items(labels, position_ids, reduction,
                                                                shift_labels=shift_labels)
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if REAL_TOKENS in batch:
        real = torch.as_tensor(batch[REAL_TOKENS])
    else:
        real = mask.sum() if mask is not None and mask.ndim == 2 else torch.tensor(ids.numel())
    return torch.stack([items.cpu(), supervised.cpu(), real.cpu(), torch.tensor(ids.numel())]).long()


class _Throughput:
    """Counts of the optimizer steps since the last log line, and when that window began."""

    def __init__(self):
        self.start = None
        self.steps = 0
        self.counts = torch.zeros(4, dtype=torch.long)

    def add(self, counts: torch.Tensor) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        self.steps += 1
        self.counts += counts.cpu()

    def metrics(self) -> dict:
        _, supervised, real, computed = (int(x) for x in self.counts)
        elapsed = time.perf_counter() - self.start
        out = {"tokens_per_second": round(real / elapsed, 2) if elapsed > 0 else None,
               "supervised_tokens": supervised / self.steps,
               "padding_fraction": round(1 - real / computed, 4) if computed else 0.0,
               "window_seconds": round(elapsed, 3), "window_steps": self.steps}
        self.start, self.steps, self.counts = time.perf_counter(), 0, torch.zeros(4, dtype=torch.long)
        return out


def post_processes_logits(model) -> bool:
    """Does the model change its logits after the LM head (soft-capping, scaling)? Then only the plain path is exact."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    return any(getattr(text, name, None) not in (None, 1, 1.0) for name in LOGIT_POSTPROCESSING)
