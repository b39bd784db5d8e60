"""S2-Attn context parallelism: one sample split across the P ranks of a group (issue 14).

Every sample of a context-parallel group of P consecutive ranks (global ranks ``g*P .. g*P + P - 1``) is cut into P
contiguous slices of ``n = N / P`` tokens; rank r of the group holds tokens ``[r*n, (r+1)*n)`` with their global
``position_ids`` (RoPE sees true positions). Everything but attention (embeddings, projections, MLP, norms, LM head,
loss) is per token and runs on the local slice only.

Why S2-Attn needs almost no communication (LongLoRA Sec. 3.2; docs/design.md, "S2-Attn — the contract"), with ``n`` a
multiple of the group size ``G`` and ``s = G // 2``:

- unshifted heads ``h < H // 2``: segments ``[kG, (k+1)G)`` never cross a slice boundary (``r*n`` is a multiple of G);
  they are the local groups of G.
- shifted heads ``h >= H // 2`` (``wrap: none``): segments start at ``s + kG``. The one that holds the slice start
  ``r*n`` is ``[r*n - (G - s), r*n + s)``: its queries on rank r are the first ``s`` local tokens, and they also see
  the last ``G - s`` keys/values of the shifted heads of rank r - 1 (the *halo*). Every other shifted segment is local
  (the last one, ``[n - (G - s), n)``, is cut at the slice end exactly as a sample end cuts it: causal attention inside
  it only looks back).

So each layer sends, per rank, ``G - s`` tokens of the shifted heads' keys and values to the right neighbour
(:class:`HaloExchange`; the backward returns their gradients to the left), O(G) instead of ring attention's
``(P - 1) / P`` of all keys and values, O(N). Rank 0 receives no halo (no wrap-around: its first half-group is a
segment of its own, as in the single-process S2-Attn).

Pieces:

- :class:`ContextParallel`: a rank's place in its group and its neighbours; attached to the attention layers by
  :func:`attach`, and read by ``sft.s2attn.s2_attention_forward`` (one hook line), which then calls
  :meth:`ContextParallel.attention` with G computed from the global length ``P * n``.
- :func:`slice_batch`: a padded batch of whole samples -> this rank's slice, labels shifted *before* slicing
  (``shift_labels``) so the last token of a slice predicts the first token of the next.
- :func:`padded_length`: the row length a batch is padded to so that ``N / P`` is a multiple of G (G the run's,
  from ``max_length``, so one process and P processes group alike at any padding).
- :func:`config_problems`: what ``context_parallel: P`` needs (checked before the model loads).

Supported: rows of one sample each, right-padded (``attention_mask``), ``wrap: none``, the SDPA backend (CPU or GPU).
Refused with a clear error: packed rows, left padding, ``wrap: roll``, full attention (that needs ring attention).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from schemas.errors import ConfigError
from schemas.train import context_parallel_launch_problems
from sft import s2attn
from schemas.labels import IGNORE_INDEX
from sft.loss import shift_labels_of

#: attribute of the attention modules that holds their :class:`ContextParallel` (set by :func:`attach`)
ATTR = "context_parallel"
_TAG_FORWARD, _TAG_BACKWARD = 14, 15  # keep the halo stream and the gradient stream apart


# ----------------------------------------------------------------------------------------------------------------------
# A rank's place in its group
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ExchangeStats:
    """What this rank's halo exchanges sent (forward halos and backward gradients), for the benchmark."""

    bytes_forward: int = 0
    bytes_backward: int = 0
    exchanges: int = 0

    def reset(self) -> None:
        self.bytes_forward = self.bytes_backward = self.exchanges = 0


@dataclass
class ContextParallel:
    """Rank ``rank`` of a context-parallel group of ``size`` ranks.

    Attributes:
        rank: position in the group (slice index), ``0 <= rank < size``.
        size: P, the number of slices a sample is cut into.
        send_to: global rank that receives this rank's halo (the right neighbour), None for the last rank.
        recv_from: global rank whose halo this rank receives (the left neighbour), None for the first rank.
        stats: bytes sent so far.
    """

    rank: int
    size: int
    send_to: int | None
    recv_from: int | None
    stats: ExchangeStats = field(default_factory=ExchangeStats)

    @classmethod
    def for_rank(cls, global_rank: int, size: int) -> ContextParallel:
        """The group of ``global_rank`` when groups are ``size`` consecutive global ranks."""
        rank = global_rank % size
        return cls(rank=rank, size=size, send_to=global_rank + 1 if rank < size - 1 else None,
                   recv_from=global_rank - 1 if rank > 0 else None)

    def attention(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, samples: tuple, group_size: int,
                  wrap: str, dropout: float, scaling: float | None) -> torch.Tensor:
        """S2-Attn of this rank's slice: token-major ``q_t (B, n, H, D)``, ``k_t, v_t (B, n, Hkv, D)`` after RoPE ->
        ``(B, n, H, D)``, zeros at padding. ``group_size`` is G of the whole sequence; ``samples`` the local
        :func:`sft.s2attn.row_samples`."""
        return slice_attention(q_t, k_t, v_t, samples, group_size, self, wrap=wrap, dropout=dropout, scaling=scaling)


def attach(model: torch.nn.Module, cp: ContextParallel | None) -> int:
    """Give every attention layer of ``model`` the context-parallel place ``cp`` (None: detach). Returns how many
    layers got it. Only S2-Attn in train mode reads it; eval mode stays dense over what it is given."""
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "is_causal")]
    if not layers:
        raise ValueError(f"{type(model).__name__}: found no attention layers (modules with layer_idx and is_causal)")
    for layer in layers:
        setattr(layer, ATTR, cp)
    return len(layers)


# ----------------------------------------------------------------------------------------------------------------------
# The exchange
# ----------------------------------------------------------------------------------------------------------------------


def _exchange(send: torch.Tensor | None, send_to: int | None, recv_like: torch.Tensor | None, recv_from: int | None,
              tag: int) -> torch.Tensor | None:
    """Send ``send`` to ``send_to`` and receive a tensor shaped like ``recv_like`` from ``recv_from`` (either side
    may be None), both posted before waiting, so a chain of ranks never deadlocks."""
    works, received = [], None
    if send_to is not None:
        works.append(dist.isend(send.contiguous(), dst=send_to, tag=tag))
    if recv_from is not None:
        received = torch.empty_like(recv_like, memory_format=torch.contiguous_format)
        works.append(dist.irecv(received, src=recv_from, tag=tag))
    for work in works:
        work.wait()
    return received


class HaloExchange(torch.autograd.Function):
    """Keys/values of the first shifted segment of a slice, extended by the halo of the left neighbour.

    Forward: ``k, v (B, n, Hs, D)`` (the KV heads of the shifted query heads) -> ``(B, halo + head, Hs, D)`` each:
    the last ``halo`` tokens of the left neighbour (received; absent on the group's first rank) followed by the first
    ``head`` local tokens. This rank's own last ``halo`` tokens go to the right neighbour.

    Backward: the gradient of the received halo goes back to the left neighbour; the one of the tokens sent right
    comes back and is added at the slice end. Every rank's output is used (its first segment's keys), so every rank
    runs this backward and the exchanges pair up.
    """

    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor, cp: ContextParallel, halo: int, head: int):
        tail = torch.stack([k[:, -halo:], v[:, -halo:]]) if cp.send_to is not None else None  # (2, B, halo, Hs, D)
        like = k.new_empty(2, k.shape[0], halo, *k.shape[2:])
        received = _exchange(tail, cp.send_to, like, cp.recv_from, _TAG_FORWARD)
        if tail is not None:
            cp.stats.bytes_forward += tail.numel() * tail.element_size()
            cp.stats.exchanges += 1
        ctx.cp, ctx.halo, ctx.head, ctx.shape = cp, halo, head, k.shape
        ctx.received = received is not None
        if received is None:
            return k[:, :head].clone(), v[:, :head].clone()
        return torch.cat([received[0], k[:, :head]], dim=1), torch.cat([received[1], v[:, :head]], dim=1)

    @staticmethod
    def backward(ctx, grad_k: torch.Tensor, grad_v: torch.Tensor):
        cp, halo, head = ctx.cp, ctx.halo, ctx.head
        own = grad_k.shape[1] - head  # halo tokens at the front of the output (0 without a left neighbour)
        back = torch.stack([grad_k[:, :own], grad_v[:, :own]]) if ctx.received else None
        like = grad_k.new_empty(2, grad_k.shape[0], halo, *grad_k.shape[2:])
        returned = _exchange(back, cp.recv_from, like, cp.send_to, _TAG_BACKWARD)
        if back is not None:
            cp.stats.bytes_backward += back.numel() * back.element_size()
        grads = []
        for i, grad in enumerate((grad_k, grad_v)):
            full = grad.new_zeros(ctx.shape)  # (B, n, Hs, D)
            full[:, :head] += grad[:, own:]
            if returned is not None:
                full[:, -halo:] += returned[i]
            grads.append(full)
        return grads[0], grads[1], None, None, None


# ----------------------------------------------------------------------------------------------------------------------
# Attention of one slice
# ----------------------------------------------------------------------------------------------------------------------


def local_lengths(samples: tuple, seq_len: int) -> list[int]:
    """Real tokens of every local row, checking that each row is one sample from token 0 (right padding at most):
    what the slices of right-padded whole samples look like. Anything else raises ValueError."""
    lengths = []
    for row, spans in enumerate(samples):
        if len(spans) > 1 or (spans and spans[0][0] != 0):
            raise ValueError(f"context parallelism supports one right-padded sample per row; row {row} of this slice "
                             f"holds the samples {list(spans)} (packed rows or left padding)")
        lengths.append(spans[0][1] if spans else 0)
    return lengths


def slice_attention(q_t, k_t, v_t, samples, group_size: int, cp: ContextParallel, *, wrap: str = "none",
                    dropout: float = 0.0, scaling: float | None = None) -> torch.Tensor:
    """S2-Attn of slice ``cp.rank`` of every row (see the module docstring); shapes as
    :meth:`ContextParallel.attention`."""
    batch, n, num_heads, head_dim = q_t.shape
    if wrap != "none":
        raise ValueError(f"context parallelism supports S2-Attn wrap 'none' only, got {wrap!r}")
    if group_size < 2 or n % group_size:
        raise ValueError(f"context parallelism needs a slice length that is a multiple of the S2-Attn group size "
                         f"G >= 2; got {n} tokens a slice and G = {group_size}")
    lengths = local_lengths(samples, n)
    n_rep = num_heads // k_t.shape[2]
    split = num_heads // 2  # query heads >= split are shifted
    shift = group_size // 2
    kv_low, kv_high, enable_gqa = s2attn._split_kv(k_t, v_t, split, n_rep)
    q_low, q_high = q_t.split([split, num_heads - split], dim=2)
    run = functools.partial(s2attn._grouped_causal, dropout=dropout, scaling=scaling, enable_gqa=enable_gqa)
    halves = []
    if split:  # unshifted: the local groups of G
        halves.append(run(q_low, *kv_low, group_size))
    # shifted: [0, s) with the halo, then local segments of G from s, the last one cut at the slice end
    q_head, q_rest = q_high.split([shift, n - shift], dim=1)
    rest = run(q_rest, kv_high[0][:, shift:], kv_high[1][:, shift:], group_size)
    head = _halo_segment(q_head, k_t, v_t, split, n_rep, group_size - shift, cp, dropout, scaling)
    halves.append(torch.cat([head, rest], dim=1))
    out = torch.cat(halves, dim=2) if len(halves) > 1 else halves[0]
    if min(lengths) < n:  # right padding: its outputs are zero (as single-process S2-Attn)
        real = torch.arange(n, device=q_t.device)[None, :] < torch.tensor(lengths, device=q_t.device)[:, None]
        out = out * real[:, :, None, None]
    return out


def _halo_segment(q_head, k_t, v_t, split: int, n_rep: int, halo: int, cp: ContextParallel, dropout: float,
                  scaling: float | None) -> torch.Tensor:
    """The first ``s`` shifted queries ``q_head (B, s, Hh, D)`` over the halo keys and their own: ``(B, s, Hh, D)``.

    Query i sees every halo key and local keys ``0..i`` (causal aligned to the end). That is one causal SDPA call of
    length ``halo + s`` whose first ``halo`` queries are zeros whose outputs are dropped: the ``is_causal`` fast path,
    no ``s x (halo + s)`` mask."""
    batch, head, num_shifted, head_dim = q_head.shape
    kv_first = split // n_rep  # the KV heads the shifted query heads read: only these travel
    k_ext, v_ext = HaloExchange.apply(k_t[:, :, kv_first:], v_t[:, :, kv_first:], cp, halo, head)
    width = k_ext.shape[1]
    enable_gqa = n_rep > 1 and split % n_rep == 0
    if n_rep > 1 and not enable_gqa:  # one KV head serves both halves: repeat per query head (as repeat_kv)
        index = torch.arange(split, split + num_shifted, device=q_head.device) // n_rep - kv_first
        k_ext, v_ext = k_ext[:, :, index], v_ext[:, :, index]
    q = torch.cat([q_head.new_zeros(batch, width - head, num_shifted, head_dim), q_head], dim=1)
    out = s2attn._grouped_causal(q, k_ext, v_ext, width, dropout, scaling, enable_gqa)
    return out[:, width - head:]


# ----------------------------------------------------------------------------------------------------------------------
# Data: lengths and slices
# ----------------------------------------------------------------------------------------------------------------------


def padded_length(longest: int, size: int, group_size: int, max_length: int) -> int:
    """The shortest row length ``>= longest`` (and ``<= max_length``) cut into ``size`` slices of whole S2-Attn
    groups of ``group_size`` tokens: the next multiple of ``size x G``. G is the run's (from ``max_length``), so
    padding changes nothing of what the real tokens attend to."""
    step = size * group_size
    length = -(-max(longest, 1) // step) * step
    if length > max_length:
        raise ValueError(f"no row length between {longest} and max_length {max_length} can be cut into {size} slices "
                         f"of whole S2-Attn groups of {group_size} tokens")
    return length


def check_rows(batch: Mapping[str, torch.Tensor]) -> None:
    """Every row one sample from token 0, right-padded: ``position_ids`` count ``0..N-1`` and ``attention_mask`` (if
    any) is a run of ones then zeros. Packed rows (positions restarting) raise ValueError, identically on every rank
    (they all see the whole batch)."""
    input_ids = batch["input_ids"]
    position_ids = batch.get("position_ids")
    if position_ids is not None:
        expected = torch.arange(input_ids.shape[1], device=position_ids.device)
        mask = batch.get("attention_mask")
        real = mask.bool() if mask is not None else torch.ones_like(position_ids, dtype=torch.bool)
        if bool(((position_ids != expected) & real).any()):
            raise ValueError("context parallelism supports one sample per row (position_ids 0..N-1); this batch holds "
                             "packed rows: turn packing off or set context_parallel: 1")
    mask = batch.get("attention_mask")
    if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("context parallelism supports right padding only; this batch has padding before real tokens")


def slice_batch(batch: Mapping[str, torch.Tensor], rank: int, size: int) -> dict[str, torch.Tensor]:
    """Slice ``rank`` of ``size`` of a batch of whole, right-padded samples ``(B, N)``.

    Returns ``input_ids``, ``position_ids`` (global: ``rank * n ..``), ``attention_mask`` (if the batch has one) and
    ``shift_labels`` (the labels shifted *before* slicing, so the last token of a slice predicts the first token of
    the next), each ``(B, N / size)``. Other keys are dropped.
    """
    check_rows(batch)
    input_ids = batch["input_ids"]
    length = input_ids.shape[1]
    if length % size:
        raise ValueError(f"a row of {length} tokens cannot be cut into {size} equal slices")
    width = length // size
    cut = slice(rank * width, (rank + 1) * width)
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    out = {"input_ids": input_ids[:, cut], "position_ids": position_ids[:, cut],
           "shift_labels": shift_labels_of(batch["labels"])[:, cut]}
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = batch["attention_mask"][:, cut]
    return {key: value.contiguous() for key, value in out.items()}


def pad_batch_to(batch: Mapping[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a collated batch ``(B, N)`` to ``(B, width)``: ``pad_id`` inputs, -100 labels, mask 0, positions
    continuing (as :class:`sft.data.PadCollator` pads)."""
    extra = width - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad a batch of {batch['input_ids'].shape[1]} tokens to {width}")
    if extra == 0:
        return dict(batch)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out = {key: torch.nn.functional.pad(value, (0, extra), value=fill[key]) if key in fill else value
           for key, value in batch.items()}
    if "position_ids" in batch:
        out["position_ids"] = torch.arange(width, dtype=batch["position_ids"].dtype).expand(
            batch["position_ids"].shape[0], width).clone()
    return out


@dataclass
class ContextParallelCollator:
    """A collator (e.g. :class:`sft.data.PadCollator`) whose rows are padded on to the shortest length that cuts into
    ``size`` slices of whole S2-Attn groups (:func:`padded_length`). The Trainer slices training batches per rank;
    evaluation gets the whole rows (dense attention, one device a sample)."""

    collator: object
    pad_id: int
    size: int
    group_size: int
    max_length: int

    def __call__(self, samples):
        batch = self.collator(samples)
        width = padded_length(batch["input_ids"].shape[1], self.size, self.group_size, self.max_length)
        return pad_batch_to(batch, width, self.pad_id)


# ----------------------------------------------------------------------------------------------------------------------
# sft.run: the launch, the data loader and the Trainer
# ----------------------------------------------------------------------------------------------------------------------


def setup(size: int) -> ContextParallel | None:
    """This process's place for ``context_parallel: size`` (None when 1), from the launcher's ``RANK`` and
    ``WORLD_SIZE``. A world size that is not a multiple of ``size`` is a :class:`schemas.errors.ConfigError` (the
    command line reports it with the other configuration problems, before this runs)."""
    if size == 1:
        return None
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    problems = context_parallel_launch_problems(size, world)
    if problems:
        raise ConfigError("\n".join(problems))
    return ContextParallel.for_rank(rank, size)


def shard_by_replica(loader, cp: ContextParallel, world_size: int, global_rank: int) -> None:
    """Make an ``accelerator.prepare``-d training loader hand the same batches to the ``cp.size`` ranks of a group:
    it then shards by data-parallel replica (``world_size / P`` of them, ``global_rank // P`` this one) instead of by
    process. Every process draws the same sample order (accelerate synchronises the sampler's seed), so only the
    shard index changes."""
    shard = getattr(loader, "batch_sampler", None)
    if shard is None or not hasattr(shard, "num_processes") or not hasattr(shard, "process_index"):
        raise RuntimeError(f"context parallelism: the training data loader ({type(loader).__name__}) is not sharded by "
                           "accelerate's BatchSamplerShard; cannot give the ranks of a group the same samples")
    shard.num_processes, shard.process_index = world_size // cp.size, global_rank // cp.size


class ContextParallelTrainerMixin:
    """Trainer methods for context parallelism, mixed in before the Trainer class (:func:`trainer_class`):

    - the training loader shards by data-parallel replica, so the ranks of a group get the same samples (checked on
      every batch: a checksum of its tokens is compared across the group);
    - every training batch is sliced for this rank (:func:`slice_batch`) *before* the Trainer counts what the loss
      divides by, so that count (supervised shifted labels, summed over all ranks) is exact for the global batch and
      each rank's loss is ``local sum / global count x world size`` (DDP averages the gradients over all ranks).

    Evaluation batches are not sliced: the model in eval mode attends densely over whole samples.
    """

    def __init__(self, *args, context_parallel: ContextParallel, **kwargs):
        super().__init__(*args, **kwargs)
        self.context_parallel = context_parallel

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        shard_by_replica(loader, self.context_parallel, self.args.world_size, self.args.process_index)
        return loader

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        cp = self.context_parallel

        def sliced():
            for batch in epoch_iterator:
                check_same_batch(batch, cp)
                yield slice_batch(batch, cp.rank, cp.size)

        return super().get_batch_samples(sliced(), num_batches, device)


def batch_checksum(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An int64 checksum of a batch's tokens, labels and shape (equal batches give equal sums)."""
    ids, labels = batch["input_ids"].long(), batch["labels"].long()
    weights = torch.arange(1, ids.numel() + 1, device=ids.device).view_as(ids) % 65521
    return torch.stack([(ids * weights).sum(), (labels * weights).sum(), torch.tensor(ids.numel(), device=ids.device)])


def check_same_batch(batch: Mapping[str, torch.Tensor], cp: ContextParallel) -> None:
    """All ranks of ``cp``'s group hold the same batch (one small all-gather over all ranks); a mismatch is a bug of
    the data loading and raises RuntimeError before any slice is trained on."""
    mine = batch_checksum(batch)  # on the batch's device: NCCL gathers CUDA tensors only
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    first = dist.get_rank() - cp.rank
    group = gathered[first:first + cp.size]
    if any(not torch.equal(other, group[0]) for other in group):
        raise RuntimeError(f"context parallelism: the ranks {first}..{first + cp.size - 1} of a group received "
                           "different batches; their slices would belong to different samples")


def trainer_class(base: type) -> type:
    """``base`` (a ``Trainer`` subclass) with :class:`ContextParallelTrainerMixin`."""
    return type(f"ContextParallel{base.__name__}", (ContextParallelTrainerMixin, base), {})


def for_training(cp: ContextParallel, model: torch.nn.Module, collator, trainer_base: type, *, pad_id: int,
                 group_size: int, max_length: int) -> tuple[object, type, dict]:
    """What ``sft.train`` changes for ``context_parallel: P``: the model's attention layers learn their place, rows
    are padded to whole groups per slice, and the Trainer slices batches. Returns ``(collator, trainer class, its
    extra keyword arguments)``."""
    attach(model, cp)
    collator = ContextParallelCollator(collator, pad_id, cp.size, group_size, max_length)
    return collator, trainer_class(trainer_base), {"context_parallel": cp}
