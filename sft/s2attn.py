"""Shifted sparse attention (S2-Attn, LongLoRA, Chen et al. 2023) as a transformers attention function.

Usage::

    import sft.s2attn  # registers the attention function and its mask function under "s2_attn"

    config = AutoConfig.from_pretrained(path)
    config.s2_attn = {"group_size_ratio": 0.25, "wrap": "none"}  # optional, these are the defaults
    model = AutoModelForCausalLM.from_pretrained(path, config=config, attn_implementation="s2_attn")

Contract (docs/design.md, "S2-Attn (shifted sparse attention) — the contract"):

- Used only while training (``module.training``); in eval mode the function is ordinary dense causal attention
  (transformers' ``sdpa_attention_forward``; inside each sample for packed rows), so weights and evaluation are
  unchanged.
- Inputs are query/key/value *after* RoPE, so every token keeps its global position.
- Group size ``G`` = ``group_size`` tokens, or ``round(group_size_ratio * N)`` (at least 1), ``N`` the padded length
  of the batch. ``sft.run`` always sets ``group_size`` = ``round(group_size_ratio * max_length)``, so in training a
  sample's segments do not depend on how its row is padded, packed or sliced. ``s = G // 2`` is the shift.
- Query heads ``h < H // 2`` attend causally inside segments ``[0, G), [G, 2G), ...``; heads ``h >= H // 2`` inside
  ``[0, s), [s, s + G), [s + G, s + 2G), ...``, the last segment cut at the end of the sample. The rule is per
  *query* head, so with grouped-query attention one key/value head may serve shifted and unshifted query heads.
- ``wrap="roll"`` (paper, Algorithm 1): the shifted heads see each sample rotated left by ``s`` (token order
  ``s, s+1, ..., L-1, 0, ..., s-1``), cut into groups of ``G`` in that order and causal in that order, so the first and
  last half-groups share a segment (the first tokens see the last ones). With ``s >= L`` there is no rotation.
- Context parallelism (``sft.context_parallel``, issue 14): an attention layer that carries a ``context_parallel``
  place holds one of P slices of every row; ``N`` is then the global length ``P * n`` and the slice is attended
  locally, plus the left neighbour's last half-group of shifted keys/values (a differentiable exchange).
- The model's own score rules apply inside every segment (:class:`ScoreRules`): Gemma2's soft-capping (the eager
  formula) and sliding windows (S2 with ``G <= W`` is exactly S2, with ``G > W`` S2 intersected with the window), in
  training, packed rows and eval. Attention sinks (``s_aux``) and, in training, ``position_bias`` are refused.
- Segments never cross a sample boundary: every row is split into samples (maximal runs of real tokens whose
  ``position_ids`` increase by one, or whose mask links them, see :func:`row_samples`) and the segment rule restarts
  at each sample start. Padding tokens take part in nothing and get a zero output and zero gradients.

Masks. transformers builds a mask only for attention names that have a mask function registered
(``masking_utils._preprocess_mask_arguments``); :func:`s2_attn_mask` is registered for ``"s2_attn"``. For a forward over
a whole sequence with a plain causal mask (training, prefill, evaluation without cache) it returns, like the
flash-attention mask function, the 2D padding mask ``(B, N)`` of booleans, or ``None`` when no token is padding:
O(N), never an N x N mask. Packed rows (transformers detects ``position_ids`` that restart and composes its causal
mask with a per-sample one) get ``None`` too: the attention functions find the samples in ``position_ids``, O(N), as
flash-attention does. Every other case (decoding with a cache, sliding windows, custom mask overlays) gets
transformers' own ``sdpa`` mask (4D boolean or ``None``), which eval mode passes on unchanged and train mode reads
only on its two diagonals (O(N)).

Full attention over packed rows (``s2_attn: false`` with packing, and S2's eval mode) is
:func:`packed_causal_forward`, registered as ``"packed_causal"``: causal attention inside each sample (S2 with one
segment per sample), on gathered samples (SDPA) or back to back in one flash varlen call (``cu_seqlens`` = sample
boundaries); rows that are not packed go to transformers' SDPA attention unchanged.

Prefix-tree rows (``packing: tree``, ``sft.tree``, issue 22): a span whose positions start at ``p > 0`` right after a
root span that started at 0 is a branch of that root (:func:`tree_spans`). Roots and ordinary samples take the routes
below; the branches of a tree are one SDPA call per head half, batched over the branches: each branch's queries over
the root's first ``p`` keys (from the start of the S2 segment holding ``p`` in that half; gathered once, broadcast)
and its own keys, with an explicit boolean mask (:func:`visible`: causal, inside the segments the sample has alone),
on every backend (flash-attn's varlen call cannot express a prefix shared by several segments).

Cost (LongLoRA Sec. 3.2): attention FLOPs ~ ``N * G`` instead of ``N**2 / 2``, never an N x N mask.

- SDPA backend, every row one sample from token 0 (no padding or right padding; the usual training batch): the
  segments are slices of the sequence, so all full groups of a head half are one ``scaled_dot_product_attention(
  is_causal=True)`` call on a ``(B * N / G, H / 2, G, D)`` view, plus one call for a shorter last group and, for the
  shifted half, one for ``[0, G/2)``.
- SDPA backend, packed rows, left padding or ``roll`` with padding, at most ``PER_SAMPLE_MAX`` samples in the batch
  (e.g. packed rows of long samples): each sample's slice of its row goes through the path above on its own, exactly
  as if it were alone in a row; no gather.
- SDPA backend, anything else (rows of many short packed samples): the segments are gathered to
  ``(segments, H / 2, length, D)``, one batched causal call per size class (next power of two), scattered back.
- flash backend (``flash_attn_varlen_func``, when flash-attn imports): all segments of a head half back to back in one
  varlen call whose ``cu_seqlens`` are the segment boundaries.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, causal_mask_function

ATTN_NAME = "s2_attn"
PACKED_CAUSAL_NAME = "packed_causal"  # full causal attention inside packed samples (s2_attn: false with packing)
CONFIG_ATTR = "s2_attn"
WRAP_MODES = ("none", "roll")
BACKENDS = ("auto", "sdpa", "flash")
_FLASH_DTYPES = (torch.float16, torch.bfloat16)

log = logging.getLogger(__name__)
_probe_failures: set[str] = set()  # reasons already warned about (once each)


# ----------------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S2AttnSettings:
    """The ``s2_attn`` dict of the model config.

    Attributes:
        group_size_ratio: G as a fraction of the padded batch length N (paper: 1/4 of the training length). Ignored
            when ``group_size`` is set.
        group_size: G in tokens; overrides the ratio (use it for a G that does not vary with dynamic padding).
        wrap: ``"none"`` (default; the first half-group of the shifted heads is a segment of its own) or ``"roll"``
            (paper's Algorithm 1, kept to reproduce the paper).
        backend: ``"auto"`` (flash-attn varlen on CUDA fp16/bf16 when ``flash_attn`` imports, else SDPA),
            ``"sdpa"`` or ``"flash"``.
    """

    group_size_ratio: float = 0.25
    group_size: int | None = None
    wrap: str = "none"
    backend: str = "auto"

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> S2AttnSettings:
        """Validate ``raw`` and report every problem at once (ValueError)."""
        raw = dict(raw or {})
        problems = []
        unknown = sorted(set(raw) - {"group_size_ratio", "group_size", "wrap", "backend"})
        if unknown:
            problems.append(f"unknown keys {unknown}")
        ratio, size = raw.get("group_size_ratio"), raw.get("group_size")
        if ratio is not None and size is not None:
            problems.append("set either group_size_ratio or group_size, not both")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0):
            problems.append(f"group_size_ratio must be a number > 0, got {ratio!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            problems.append(f"group_size must be an integer >= 1, got {size!r}")
        wrap, backend = raw.get("wrap", "none"), raw.get("backend", "auto")
        if wrap not in WRAP_MODES:
            problems.append(f"wrap must be one of {WRAP_MODES}, got {wrap!r}")
        if backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {backend!r}")
        if problems:
            raise ValueError("invalid s2_attn settings: " + "; ".join(problems))
        return cls(group_size_ratio=float(ratio) if ratio is not None else 0.25, group_size=size, wrap=wrap,
                   backend=backend)

    @classmethod
    def from_config(cls, config) -> S2AttnSettings:
        """Settings from ``config.s2_attn`` (a dict, an ``S2AttnSettings`` or absent: defaults)."""
        raw = getattr(config, CONFIG_ATTR, None)
        return raw if isinstance(raw, S2AttnSettings) else cls.from_dict(raw)

    def group_size_for(self, seq_len: int) -> int:
        """G for a batch of padded length ``seq_len``: ``group_size``, else ``round(ratio * seq_len)``, at least 1."""
        if self.group_size is not None:
            return self.group_size
        return max(1, round(self.group_size_ratio * seq_len))  # schemas.train.s2_group_size (no pydantic here)


# ----------------------------------------------------------------------------------------------------------------------
# Score rules of the model (soft-capping, sliding windows) and the one attention call everything goes through
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreRules:
    """What a model's own attention does to its scores besides the causal mask, applied inside every segment/sample:
    ``softcap`` (Gemma2: ``tanh(s / c) * c``, the eager formula) and ``window`` (a query sees keys fewer than W
    positions back, as transformers' ``sliding_window_causal_mask_function``). S2 with ``G <= W`` is exactly S2 (a
    segment never spans W tokens); with ``G > W`` it is S2 intersected with the window."""

    softcap: float | None = None
    window: int | None = None

    @classmethod
    def of(cls, kwargs: Mapping) -> ScoreRules:
        return cls(kwargs.get("softcap"), kwargs.get("sliding_window"))

    def __bool__(self) -> bool:
        return self.softcap is not None or self.window is not None


NO_RULES = ScoreRules()


def attend(q, k, v, *, dropout: float, scaling: float | None, enable_gqa: bool = False,
           rules: ScoreRules = NO_RULES, allowed: torch.Tensor | None = None, q_pos=None, k_pos=None) -> torch.Tensor:
    """Heads-major ``q (..., H, L, D)``, ``k, v (..., Hk, S, D)`` -> ``(..., H, L, D)``: causal over slots (``L == S``),
    or over positions ``q_pos (L,)`` / ``k_pos (S,)`` when given, and/or the boolean mask ``allowed`` (broadcast to
    ``(..., L, S)``); then the window of ``rules`` and, with a soft cap, the eager formula. Without rules or masks it
    is SDPA's ``is_causal`` (flash/efficient kernels)."""
    if not rules and allowed is None and q_pos is None:
        extra = {"enable_gqa": True} if enable_gqa else {}
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, **extra)
    if q_pos is None and allowed is None:
        q_pos = k_pos = torch.arange(q.shape[-2], device=q.device)
    if q_pos is not None:
        causal = k_pos[None, :] <= q_pos[:, None]
        allowed = causal if allowed is None else allowed & causal
    if rules.window is not None:
        if q_pos is None:  # slots of a whole sequence, queries aligned to the end
            q_pos = torch.arange(q.shape[-2], device=q.device) + (k.shape[-2] - q.shape[-2])
            k_pos = torch.arange(k.shape[-2], device=q.device)
        allowed = allowed & (q_pos[:, None] - k_pos[None, :] < rules.window)
    if rules.softcap is None:
        extra = {"enable_gqa": True} if enable_gqa else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling, **extra)
    if k.shape[-3] != q.shape[-3]:  # GQA: the eager formula needs a key/value head per query head
        k, v = (x.repeat_interleave(q.shape[-3] // x.shape[-3], dim=-3) for x in (k, v))
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scaling is None else scaling)
    scores = torch.tanh(scores / rules.softcap) * rules.softcap
    wide = torch.promote_types(q.dtype, torch.float32)  # as eager attention: the softmax in float32 at least
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1, dtype=wide).to(q.dtype)
    probs = probs.nan_to_num(0.0)  # a query that may see nothing (padding slots) gets zeros
    return F.dropout(probs, p=dropout, training=dropout > 0) @ v


# ----------------------------------------------------------------------------------------------------------------------
# Pure helpers: which heads shift, where the samples and segments are
# ----------------------------------------------------------------------------------------------------------------------


def shifted_heads(num_heads: int) -> range:
    """Query heads that use the shifted segments: ``h >= num_heads // 2`` (LongLoRA Sec. 3.2, docs/design.md).

    With an odd count the shifted half is the larger one (9 heads: 4 unshifted, 5 shifted).
    """
    return range(num_heads // 2, num_heads)


def segment_spans(length: int, group_size: int, shifted: bool, wrap: str = "none") -> list[tuple[int, int]]:
    """The segments of one sample of ``length`` tokens for one half of the heads.

    Returns ``(start, size)`` pairs, in order. The tokens of a segment, in causal order, are
    ``(start + i) % length`` for ``i < size`` (the modulo only matters for ``wrap="roll"``). The segments partition
    ``range(length)``.

    - unshifted: ``[0, G), [G, 2G), ...``
    - shifted, ``wrap="none"``: ``[0, s), [s, s + G), ...`` with ``s = G // 2``
    - shifted, ``wrap="roll"``: groups of ``G`` over the rotation ``s, ..., length - 1, 0, ..., s - 1``
      (LongLoRA Algorithm 1: ``roll(-G/2)`` before grouping)

    The last segment is cut at ``length``; when ``s == 0`` or ``s >= length`` shifted equals unshifted.
    """
    if length <= 0:
        return []
    shift = group_size // 2 if shifted else 0
    if shift == 0 or shift >= length:
        return [(start, min(group_size, length - start)) for start in range(0, length, group_size)]
    if wrap == "roll":
        return [((shift + r) % length, min(group_size, length - r)) for r in range(0, length, group_size)]
    return [(0, shift)] + [(start, min(group_size, length - start)) for start in range(shift, length, group_size)]


def row_samples(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch_size: int,
                seq_len: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Sample spans of every row, from the mask the attention function receives and the ``position_ids``.

    Args:
        attention_mask: ``None`` (no padding), a 2D padding mask ``(B, N)`` (True or 1 = real token), or a 4D mask
            ``(B or 1, heads, N, N)``, boolean (True = may attend) or additive float; only its diagonal (is token i
            real?) and sub-diagonal (does i see i - 1, i.e. same sample?) are read, from head 0.
        position_ids: ``(B or 1, N)`` (or ``(k, B, N)`` multimodal RoPE: the first is used); a position that is not
            the previous one plus 1 starts a new packed sample, as in ``masking_utils.find_packed_sequence_indices``.

    Returns:
        For each row, its samples as ``(start, end)`` half-open spans: maximal runs of real tokens in which every
        token continues the previous one (same packed sample). Padding belongs to no sample.

    Cost O(B * N) on the device and one host sync for the (few) span boundaries.
    """
    device = attention_mask.device if attention_mask is not None else (
        position_ids.device if position_ids is not None else torch.device("cpu"))
    valid = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    continues = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    if attention_mask is not None:
        if attention_mask.ndim == 2:
            if attention_mask.shape[-1] != seq_len:
                raise ValueError(f"2D attention mask of length {attention_mask.shape[-1]} for {seq_len} tokens")
            valid = valid & attention_mask.to(torch.bool)
        elif attention_mask.ndim == 4:
            if attention_mask.shape[-2:] != (seq_len, seq_len):
                raise ValueError(f"S2-Attn needs a square mask over the whole sequence, got {attention_mask.shape}")
            mask = attention_mask[:, 0]  # (B or 1, N, N)
            if mask.dtype != torch.bool:  # additive mask: 0 where allowed, a large negative number elsewhere
                mask = mask > torch.finfo(mask.dtype).min / 2
            idx = torch.arange(seq_len, device=device)
            valid = valid & mask[:, idx, idx]  # token i sees itself: it is real
            continues[:, 1:] &= mask[:, idx[1:], idx[:-1]]  # token i sees token i - 1: same sample
        else:
            raise ValueError(f"attention mask must be 2D or 4D, got shape {tuple(attention_mask.shape)}")
    if position_ids is not None:
        pos = position_ids[0] if position_ids.ndim == 3 else position_ids
        if pos.shape[-1] == seq_len:
            continues = continues & F.pad(torch.diff(pos.to(device), dim=-1) == 1, (1, 0), value=True)
    # A sample starts at a real token that does not continue a real previous token; it ends before the next start
    # or padding token. Transfer only these boundaries to the host.
    prev_valid = F.pad(valid[:, :-1], (1, 0), value=False)
    linked = continues & prev_valid & valid
    starts = valid & ~linked
    ends = valid & ~F.pad(linked[:, 1:], (0, 1), value=False)
    start_rows, start_cols = starts.nonzero(as_tuple=True)
    end_cols = ends.nonzero(as_tuple=True)[1]
    rows = [[] for _ in range(batch_size)]
    for row, start, end in zip(start_rows.tolist(), start_cols.tolist(), end_cols.tolist()):
        rows[row].append((start, end + 1))
    return tuple(tuple(spans) for spans in rows)


# ----------------------------------------------------------------------------------------------------------------------
# Prefix trees (issue 22; sft.tree): branches that attend to a shared prefix and to themselves
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSpans:
    """The samples of a batch that hold prefix trees (``sft.tree``), split into what is attended as ordinary samples
    and the branches.

    ``kept``: per row, the spans attended as samples (ordinary samples, and every tree's root: its prefix and first
    branch, which is exactly that sample alone). ``branches``: ``(row, start, end, root, prefix)`` for every other
    branch: row columns ``[start, end)`` hold the sample's tokens at positions ``prefix, prefix + 1, ...``, and its
    first ``prefix`` tokens are the root's columns ``[root, root + prefix)``."""

    kept: tuple
    branches: tuple


def tree_spans(samples: tuple, position_ids: torch.Tensor | None) -> TreeSpans | None:
    """Find the prefix trees of a batch in its ``position_ids`` (O(spans), one host sync), or ``None`` if none.

    A tree row lays out a root sample (positions ``0..L-1``) and then branches whose positions continue the shared
    prefix (``p, p + 1, ...`` with ``0 < p < L``): a span (see :func:`row_samples`) that starts at a position
    ``p > 0`` right after a root that started at position 0 (further branches of the same tree in between) is a
    branch of that root. Nothing else lays out such spans (packed samples and padding samples start at 0), except a
    left-padded row, whose first span has no root and stays an ordinary sample."""
    if position_ids is None or not any(spans for spans in samples):
        return None
    pos = position_ids[0] if position_ids.ndim == 3 else position_ids
    rows = torch.tensor([r if pos.shape[0] > 1 else 0 for r, spans in enumerate(samples) for _ in spans])
    cols = torch.tensor([start for spans in samples for start, _ in spans])
    firsts = iter(pos[rows.to(pos.device), cols.to(pos.device)].tolist())
    kept, branches = [], []
    for row, spans in enumerate(samples):
        own, root = [], None
        for start, end in spans:
            first = next(firsts)
            if first == 0:
                root = (start, end)
            elif root is not None and first < root[1] - root[0]:
                branches.append((row, start, end, root[0], first))
                continue
            else:
                root = None
            own.append((start, end))
        kept.append(tuple(own))
    return TreeSpans(tuple(kept), tuple(branches)) if branches else None


def branch_key_tokens(spans: Sequence[tuple[int, int]], k: int) -> torch.Tensor:
    """The row slots whose keys branch ``k`` of a tree (its ``spans``, in row order) sees besides the prefix: its own
    tokens, never another branch's."""
    start, end = spans[k]
    return torch.arange(start, end)


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, group_size: int | None, shifted: bool) -> torch.Tensor:
    """May the query at position ``q_pos`` see the key at ``k_pos`` (broadcast together)? Causal by position; with a
    ``group_size`` G also inside the same S2 segment (``wrap="none"``): unshifted ``[0, G), [G, 2G), ...``, shifted
    ``[0, G/2), [G/2, G/2 + G), ...``, as :func:`segment_spans` cuts the sample alone."""
    mask = k_pos <= q_pos
    if group_size is None:
        return mask
    shift = group_size // 2 if shifted else 0
    segment = lambda p: torch.div(p - shift, group_size, rounding_mode="floor")  # noqa: E731
    return mask & (segment(k_pos) == segment(q_pos))


def _first_visible(prefix: int, group_size: int | None, shifted: bool) -> int:
    """The earliest position a branch starting at ``prefix`` may see in a head half: the start of the S2 segment
    holding ``prefix`` (0 for full attention)."""
    if group_size is None:
        return 0
    shift = group_size // 2 if shifted else 0
    return 0 if prefix < shift else shift + (prefix - shift) // group_size * group_size


def _padded(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index (n, L), valid (n, L))``: the 1-D index tensors `parts` as rows padded to the longest with each row's
    last entry (a real slot: gathers stay in range), and which entries are real."""
    width = max(len(x) for x in parts)
    index = torch.stack([torch.cat([x, x[-1:].expand(width - len(x))]) for x in parts])
    valid = torch.arange(width)[None, :] < torch.tensor([len(x) for x in parts])[:, None]
    return index, valid


def _attend_branches(out: torch.Tensor, q_t, k_t, v_t, position_ids: torch.Tensor, branches: tuple,
                     group_size: int | None, dropout: float, scaling: float | None,
                     rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """``out (B, N, H, D)`` with the branch tokens' attention written in. The branches of one tree are one SDPA call
    (per head half for S2) batched over the branches: branch k's queries over the prefix's keys (from the start of the
    S2 segment the branches start in, in that head half; gathered once and broadcast) followed by its own keys
    (:func:`branch_key_tokens`), each padded to the tree's longest branch and masked by position (:func:`visible`)
    and padding. So a tree costs ``branches x (prefix + branch)`` scores, not ``(all branch tokens) x (prefix + all
    branch tokens)`` (one mask over every branch's keys: quadratic in the branches, 2x a whole 8k row's attention at
    100 branches). ``group_size=None``: full causal attention."""
    batch, seq_len, num_heads, _ = q_t.shape
    n_rep = num_heads // k_t.shape[2]
    pos = position_ids[0] if position_ids.ndim == 3 else position_ids
    halves = ([(slice(0, num_heads // 2), False), (slice(num_heads // 2, num_heads), True)]
              if group_size is not None else [(slice(0, num_heads), False)])
    halves = [(h, shifted) for h, shifted in halves if h.stop > h.start]
    own_rules = ScoreRules(rules.softcap)  # the window goes into the mask (positions here are not slots)
    trees: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for row, start, end, root, prefix in branches:
        trees.setdefault((row, root, prefix), []).append((start, end))
    index, parts = [], []
    for (row, root, prefix), spans in trees.items():
        device = q_t.device
        queries, q_valid = (x.to(device) for x in _padded([torch.arange(s, e) for s, e in spans]))
        keys, k_valid = (x.to(device) for x in _padded([branch_key_tokens(spans, k) for k in range(len(spans))]))
        row_pos = pos[row if pos.shape[0] > 1 else 0]
        q_pos, k_pos = row_pos[queries][..., None], row_pos[keys][:, None]
        q = q_t[row, queries].transpose(1, 2)  # (branches, H, Lq, D)
        k_own, v_own = (x[row, keys].repeat_interleave(n_rep, dim=2).transpose(1, 2) for x in (k_t, v_t))
        heads = []
        for h, shifted in halves:  # each half from the start of its own segment: no keys it may not see
            shared = torch.arange(root + _first_visible(prefix, group_size, shifted), root + prefix, device=device)
            shared_pos = row_pos[shared][None, None, :]
            k_shared, v_shared = (x[row, shared].repeat_interleave(n_rep, dim=1).transpose(0, 1)[h]
                                  for x in (k_t, v_t))
            allowed = torch.cat([visible(q_pos, shared_pos, group_size, shifted).expand(-1, -1, len(shared)),
                                 visible(q_pos, k_pos, group_size, shifted) & k_valid[:, None, :]], dim=-1)
            if rules.window is not None:
                allowed = allowed & (q_pos - torch.cat([shared_pos.expand(len(spans), 1, -1), k_pos], -1)
                                     < rules.window)
            k = torch.cat([k_shared[None].expand(len(spans), -1, -1, -1), k_own[:, h]], dim=2)
            v = torch.cat([v_shared[None].expand(len(spans), -1, -1, -1), v_own[:, h]], dim=2)
            heads.append(attend(q[:, h], k, v, dropout=dropout, scaling=scaling, rules=own_rules,
                                allowed=allowed[:, None]))
        result = (torch.cat(heads, dim=1) if len(heads) > 1 else heads[0]).transpose(1, 2)  # (branches, Lq, H, D)
        parts.append(result[q_valid])
        index.append(queries[q_valid] + row * seq_len)
    flat = out.reshape(batch * seq_len, *out.shape[2:])
    values = torch.cat(parts).to(flat.dtype)
    return flat.index_put((torch.cat(index).to(flat.device),), values).view(out.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Plans: gather indices of the segments (cached per batch structure)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SegmentTable:
    """All segments of a batch for one head half; segment k holds tokens
    ``base[k] + (start[k] + i) % span[k]`` for ``i < size[k]`` of row ``row[k]``."""

    row: tuple[int, ...]
    base: tuple[int, ...]
    span: tuple[int, ...]
    start: tuple[int, ...]
    size: tuple[int, ...]


@functools.lru_cache(maxsize=64)
def _segment_table(samples: tuple, group_size: int, shifted: bool, wrap: str) -> _SegmentTable:
    cols: tuple[list, ...] = ([], [], [], [], [])
    for row, spans in enumerate(samples):
        for base, end in spans:
            for start, size in segment_spans(end - base, group_size, shifted, wrap):
                for col, value in zip(cols, (row, base, end - base, start, size)):
                    col.append(value)
    return _SegmentTable(*(tuple(col) for col in cols))


def _segment_tokens(table: _SegmentTable, width: int, keys: list[int], device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """Rows ``(S, 1)``, token indices ``(S, width)`` and kept slots ``(S, width)`` of the segments ``keys``.

    Slots past a segment's size repeat its first token: they sit after every real slot, so causal attention hides
    them from the real queries (their own outputs are dropped)."""
    pick = torch.tensor(keys, dtype=torch.long)
    row, base, span, start, size = (torch.tensor(col, dtype=torch.long)[pick] for col in
                                    (table.row, table.base, table.span, table.start, table.size))
    slot = torch.arange(width, dtype=torch.long)
    keep = slot[None, :] < size[:, None]
    tokens = base[:, None] + (start[:, None] + torch.where(keep, slot[None, :], 0)) % span[:, None]
    return row[:, None].to(device), tokens.to(device), keep.to(device)


@functools.lru_cache(maxsize=8)  # index tensors on the device: keep only the batch structures in use
def _sdpa_plan(table: _SegmentTable, device: torch.device) -> tuple:
    """Segments bucketed by size class (next power of two), each bucket padded to its longest segment, so that
    padding wastes < 2x on short segments and nothing on the usual full groups of G."""
    buckets: dict[int, list[int]] = {}
    for k, size in enumerate(table.size):
        buckets.setdefault((size - 1).bit_length(), []).append(k)
    plan = []
    for keys in buckets.values():
        width = max(table.size[k] for k in keys)
        row, tokens, keep = _segment_tokens(table, width, keys, device)
        plan.append((row, tokens, keep, row.expand_as(tokens)[keep], tokens[keep]))
    return tuple(plan)


@functools.lru_cache(maxsize=8)
def _varlen_plan(table: _SegmentTable, device: torch.device) -> tuple:
    """Flat token order of all segments, back to back, with their ``cu_seqlens`` (int32) and longest length."""
    width = max(table.size)
    row, tokens, keep = _segment_tokens(table, width, list(range(len(table.size))), device)
    cu_seqlens = F.pad(torch.tensor(table.size, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    return row.expand_as(tokens)[keep], tokens[keep], cu_seqlens.to(device), width


# ----------------------------------------------------------------------------------------------------------------------
# Backends: attention of one head half over its segments
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache  # a failed import searches sys.path again on every call
def _flash_varlen_func():
    """``flash_attn.flash_attn_varlen_func`` or ``None`` when flash-attn is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def select_backend(requested: str, query: torch.Tensor) -> str:
    """``"sdpa"`` or ``"flash"`` for ``requested`` in ``BACKENDS``; ``auto`` takes flash on CUDA fp16/bf16 when it
    imports."""
    if requested == "sdpa":
        return "sdpa"
    available = _flash_varlen_func() is not None
    if requested == "flash":
        if not available:
            raise ImportError("s2_attn backend 'flash' needs flash-attn (pip install flash-attn)")
        return "flash"
    return "flash" if available and query.is_cuda and query.dtype in _FLASH_DTYPES else "sdpa"


def _grouped_causal(q, k, v, group: int, dropout: float, scaling: float | None, enable_gqa: bool,
                    rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """Causal attention inside consecutive groups of ``group`` tokens, the last one cut at the end.

    ``q (B, L, Hq, D)``, ``k, v (B, L, Hk, D)`` token-major -> ``(B, L, Hq, D)``. All full groups are one batched SDPA
    call, a shorter last group a second one (no padding, so no wasted FLOPs).
    """
    length = q.shape[1]
    group = min(group, length)
    full = length - length % group
    if full == length:
        return _causal_groups(q, k, v, group, dropout, scaling, enable_gqa, rules)
    (q0, q1), (k0, k1), (v0, v1) = (x.split([full, length - full], dim=1) for x in (q, k, v))
    return torch.cat([_causal_groups(q0, k0, v0, group, dropout, scaling, enable_gqa, rules),
                      _causal_groups(q1, k1, v1, length - full, dropout, scaling, enable_gqa, rules)], dim=1)


def _causal_groups(q, k, v, group: int, dropout: float, scaling: float | None, enable_gqa: bool,
                   rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """:func:`_grouped_causal` when ``group`` divides the length."""
    batch, length, _, head_dim = q.shape
    # (B, n * G, H, D) -> (B * n, H, G, D): a view of the token-major layout (a copy only for B > 1 slices)
    q, k, v = (x.reshape(batch * (length // group), group, x.shape[2], head_dim).transpose(1, 2) for x in (q, k, v))
    o = attend(q, k, v, dropout=dropout, scaling=scaling, enable_gqa=enable_gqa, rules=rules)
    return o.transpose(1, 2).reshape(batch, length, -1, head_dim)


def _contiguous_half(q, k, v, group_size: int, shifted: bool, wrap: str, dropout: float, scaling: float | None,
                     enable_gqa: bool, rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """One head half when every row is one sample that starts at token 0 (right padding at most; none for
    ``wrap="roll"``): segments are slices of the sequence, no gather. Token-major ``(B, N, Hh, D)`` in and out.

    Right padding needs no care here: with ``wrap="none"`` the boundaries of a sample that starts at 0 do not depend
    on its length, and padding comes after every real token of its segment (the caller zeroes padded outputs).
    """
    seq_len = q.shape[1]
    shift = group_size // 2 if shifted else 0
    run = functools.partial(_grouped_causal, dropout=dropout, scaling=scaling, enable_gqa=enable_gqa, rules=rules)
    if shift == 0 or shift >= seq_len:
        return run(q, k, v, group_size)
    if wrap == "roll":  # Algorithm 1: roll(-G/2), attend in groups, roll back
        return run(*(x.roll(-shift, dims=1) for x in (q, k, v)), group_size).roll(shift, dims=1)
    # split(), not slicing: its backward is one concatenation instead of a zero-filled input-sized tensor per slice
    (q0, q1), (k0, k1), (v0, v1) = (x.split([shift, seq_len - shift], dim=1) for x in (q, k, v))
    head = run(q0, k0, v0, shift)  # [0, G/2): a segment of its own (no wrap)
    tail = run(q1, k1, v1, group_size)  # [G/2 + kG, G/2 + (k+1)G), the last one cut at N
    return torch.cat([head, tail], dim=1)


def _is_contiguous(samples: tuple, seq_len: int, wrap: str) -> bool:
    """Can :func:`_contiguous_half` serve this batch: every row one sample from token 0 (roll: the whole row)?"""
    for spans in samples:
        if len(spans) > 1 or (spans and spans[0][0] != 0) or (wrap == "roll" and spans != ((0, seq_len),)):
            return False
    return True


def _split_kv(k_t: torch.Tensor, v_t: torch.Tensor, split: int, n_rep: int):
    """Key/value heads of the query heads ``[0, split)`` and ``[split, H)`` (query head h reads KV head
    ``h // n_rep``, as ``repeat_kv``), and whether SDPA must broadcast them (``enable_gqa``). When ``split`` is not a
    multiple of ``n_rep`` one KV head serves both halves: KV heads are then repeated per query head."""
    if n_rep > 1 and split % n_rep:
        k_t, v_t = (x[:, :, :, None].expand(*x.shape[:3], n_rep, x.shape[-1]).flatten(2, 3) for x in (k_t, v_t))
        n_rep = 1
    cut = split // n_rep
    (k_low, k_high), (v_low, v_high) = (x.split([cut, x.shape[2] - cut], dim=2) for x in (k_t, v_t))
    return (k_low, v_low), (k_high, v_high), n_rep > 1


def _gather(x_t: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """``x_t (B, N, Hx, D)`` at ``rows``/``tokens`` (broadcastable, shape ``S...``) and ``heads (Hh,)``:
    ``(*S, Hh, D)``. One gather; for keys/values it also repeats KV heads per query head (GQA)."""
    return x_t[rows[..., None], tokens[..., None], heads]


def _gathered_half(q_t, k_t, v_t, heads, kv_heads, plan, dropout: float, scaling: float | None,
                   rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """Any segment layout (packed samples, left padding, roll with padding): the segments of each size class are
    gathered to ``(S, Hh, W, D)`` for one batched causal SDPA call; returns ``(B, N, Hh, D)``, zeros at padding."""
    batch, seq_len, _, head_dim = q_t.shape
    out_rows, out_tokens, out_values = [], [], []
    for rows, tokens, keep, keep_rows, keep_tokens in plan:
        q, k, v = (_gather(x, rows, tokens, idx).transpose(1, 2) for x, idx in
                   ((q_t, heads), (k_t, kv_heads), (v_t, kv_heads)))
        o = attend(q, k, v, dropout=dropout, scaling=scaling, rules=rules)
        out_values.append(o.transpose(1, 2)[keep])  # (kept slots, Hh, D)
        out_rows.append(keep_rows)
        out_tokens.append(keep_tokens)
    values = torch.cat(out_values)
    # the attention's dtype, not the query's: under autocast SDPA returns bf16 for float32 queries (RoPE upcasts them)
    out = values.new_zeros(batch, seq_len, len(heads), head_dim)
    return out.index_put((torch.cat(out_rows), torch.cat(out_tokens)), values)


def _flash_half(q_t, k_t, v_t, heads, kv_heads, plan, dropout: float, scaling: float | None,
                rules: ScoreRules = NO_RULES) -> torch.Tensor:
    """flash-attn varlen over all segments back to back (``cu_seqlens`` = segment boundaries); ``(B, N, Hh, D)``.
    flash-attn soft-caps and windows itself (``softcap``, ``window_size=(W - 1, 0)``)."""
    rows, tokens, cu_seqlens, max_len = plan
    q, k, v = (_gather(x, rows, tokens, idx) for x, idx in ((q_t, heads), (k_t, kv_heads), (v_t, kv_heads)))
    extra = {}
    if rules.softcap is not None:
        extra["softcap"] = rules.softcap
    if rules.window is not None:
        extra["window_size"] = (rules.window - 1, 0)
    o = _flash_varlen_func()(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout,
                             softmax_scale=scaling, causal=True, **extra)
    out = o.new_zeros(q_t.shape[0], q_t.shape[1], len(heads), q_t.shape[-1])  # o's dtype, as in _gathered_half
    return out.index_put((rows, tokens), o)


# ----------------------------------------------------------------------------------------------------------------------
# The attention function and its mask function
# ----------------------------------------------------------------------------------------------------------------------


def _eval_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor | None:
    """The mask ``sdpa_attention_forward`` expects: 4D masks and ``None`` pass through; a 2D padding mask
    ``(B, kv_len)`` becomes ``(B, 1, q_len, kv_len)`` causal-and-real (queries aligned to the end), or ``None`` when
    nothing is padding and ``q_len == kv_len`` (SDPA's ``is_causal``)."""
    if attention_mask is None or attention_mask.ndim != 2:
        return attention_mask
    real = attention_mask.to(torch.bool)
    if q_len == kv_len and bool(real.all()):
        return None
    q_pos = torch.arange(q_len, device=real.device) + (kv_len - q_len)
    causal = torch.arange(kv_len, device=real.device)[None, :] <= q_pos[:, None]  # (q, kv)
    return causal[None, None] & real[:, None, None, :]


def s2_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Shifted sparse attention with the API of transformers' ``sdpa_attention_forward``.

    Args:
        module: the attention layer; ``module.training`` picks S2 (train) or dense causal (eval), ``module.config``
            holds the ``s2_attn`` settings (:class:`S2AttnSettings`).
        query: ``(B, H, N, D)`` after RoPE.
        key, value: ``(B, Hkv, N, D)`` after RoPE, ``H % Hkv == 0``.
        attention_mask: what :func:`s2_attn_mask` returned (``None``, ``(B, N)`` padding mask, or a 4D mask).
        dropout, scaling: as for SDPA.
        kwargs: ``position_ids`` ``(B or 1, N)`` separate packed samples in training.

    Returns:
        ``(attn_output (B, N, H, D), None)``.
    """
    if not module.training:
        extra = {"position_bias": position_bias} if position_bias is not None else {}
        return packed_causal_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     is_causal=is_causal, **extra, **kwargs)

    _check_supported(module, query, key, is_causal, position_bias, kwargs)
    batch, _, seq_len, _ = query.shape
    settings = S2AttnSettings.from_config(getattr(module, "config", None))
    rules = ScoreRules.of(kwargs)
    # context parallelism (sft.context_parallel, issue 14): this rank holds one of cp.size slices of every row
    cp = getattr(module, "context_parallel", None)
    if rules and cp is not None:
        raise NotImplementedError("context parallelism with soft-capping or sliding-window attention is not "
                                  "supported; set context_parallel: 1")
    if rules.window is not None and settings.wrap == "roll":
        raise NotImplementedError("sliding-window attention with wrap: roll is not supported (a rolled segment "
                                  "joins the end of a sample to its start); use wrap: none")
    group_size = settings.group_size_for(seq_len * (cp.size if cp is not None else 1))
    samples = row_samples(attention_mask, kwargs.get("position_ids"), batch, seq_len)
    tree = tree_spans(samples, kwargs.get("position_ids"))  # prefix trees (sft.tree): roots as samples, then branches
    if tree is not None:
        if cp is not None:
            raise NotImplementedError("prefix-tree rows (packing: tree) are not supported with context parallelism")
        if settings.wrap != "none":
            raise NotImplementedError("prefix-tree rows (packing: tree) need wrap: none (with roll a prefix token "
                                      "sees the end of each sample)")
        samples = tree.kept
    backend = select_backend(settings.backend, query)

    # Token-major views (B, N, H, D): the layout the projections produced.
    q_t, k_t, v_t = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    if cp is not None:  # SDPA on the local slice plus the shifted heads' halo from the left neighbour
        out = cp.attention(q_t, k_t, v_t, samples, group_size, settings.wrap, dropout, scaling)
    elif backend == "sdpa" and _is_contiguous(samples, seq_len, settings.wrap):
        out = _sliced_attention(q_t, k_t, v_t, samples, group_size, settings.wrap, dropout, scaling, rules)
    elif backend == "sdpa" and _few_samples(samples):
        out = _per_sample_attention(q_t, k_t, v_t, samples, lambda q, k, v: _sliced_attention(
            q, k, v, (((0, q.shape[1]),),), group_size, settings.wrap, dropout, scaling, rules))
    else:
        out = _gathered_attention(q_t, k_t, v_t, samples, group_size, settings.wrap, backend, dropout, scaling,
                                  rules)
    if tree is not None:  # branches: SDPA with their S2 masks, whatever the backend
        out = _attend_branches(out, q_t, k_t, v_t, kwargs["position_ids"], tree.branches, group_size, dropout,
                               scaling, rules)
    return out.contiguous(), None


#: batches of at most this many samples (packed rows of long samples, left padding) are attended one sample slice at
#: a time, the path of a sample alone; more samples (rows of many short ones) are gathered by size class instead
PER_SAMPLE_MAX = 32


def _few_samples(samples: tuple) -> bool:
    """Is :func:`_per_sample_attention` the cheaper route: few enough samples that one small attention call per sample
    costs less than gathering every query, key and value (and scattering the output) of the batch?"""
    return sum(len(spans) for spans in samples) <= PER_SAMPLE_MAX


def _per_sample_attention(q_t, k_t, v_t, samples, attend) -> torch.Tensor:
    """``attend(q, k, v)`` on every sample's own slice of its row (token-major ``(1, L, H, D)``), exactly as if the
    sample were alone in a row: no gather, no scatter; zeros at padding. Shapes as :func:`_sliced_attention`.

    The slices come from ``split()`` (rows, then samples and the gaps between them): its backward is one concatenation,
    where each sliced view's backward would fill a zero tensor the size of the whole input."""
    seq_len = q_t.shape[1]
    rows = [x.split(1) for x in (q_t, k_t, v_t)]
    out_rows = []
    for row, spans in enumerate(samples):
        cuts, real, at = [], [], 0
        for base, end in spans:
            if base > at:
                cuts.append(base - at)
                real.append(False)
            cuts.append(end - base)
            real.append(True)
            at = end
        if at < seq_len:
            cuts.append(seq_len - at)
            real.append(False)
        q, k, v = (x[row].split(cuts, dim=1) for x in rows)
        parts = [attend(q[i], k[i], v[i]) if keep else None for i, keep in enumerate(real)]
        # the attention's dtype (bf16 under autocast for float32 queries), as in _gathered_half
        dtype = next((part.dtype for part in parts if part is not None), q_t.dtype)
        parts = [part if part is not None else q[i].new_zeros(q[i].shape, dtype=dtype) for i, part in enumerate(parts)]
        out_rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return torch.cat(out_rows) if len(out_rows) > 1 else out_rows[0]


def _sliced_attention(q_t, k_t, v_t, samples, group_size, wrap, dropout, scaling, rules=NO_RULES) -> torch.Tensor:
    """S2 when :func:`_is_contiguous`: ``q_t (B, N, H, D)``, ``k_t, v_t (B, N, Hkv, D)`` -> ``(B, N, H, D)``."""
    seq_len, num_heads = q_t.shape[1], q_t.shape[2]
    split = num_heads // 2  # query heads >= split are shifted
    kv_low, kv_high, enable_gqa = _split_kv(k_t, v_t, split, num_heads // k_t.shape[2])
    q_low, q_high = q_t.split([split, num_heads - split], dim=2)
    halves = [_contiguous_half(q, *kv, group_size, shifted, wrap, dropout, scaling, enable_gqa, rules)
              for q, kv, shifted in ((q_low, kv_low, False), (q_high, kv_high, True)) if q.shape[2]]
    out = torch.cat(halves, dim=2) if len(halves) > 1 else halves[0]
    lengths = torch.tensor([spans[0][1] if spans else 0 for spans in samples], device=q_t.device)
    if bool((lengths < seq_len).any()):  # right padding saw only padding and its prefix: zero its outputs
        out = out * (torch.arange(seq_len, device=q_t.device)[None, :] < lengths[:, None])[:, :, None, None]
    return out


def _gathered_attention(q_t, k_t, v_t, samples, group_size, wrap, backend, dropout, scaling,
                        rules=NO_RULES) -> torch.Tensor:
    """S2 for any sample layout, SDPA on gathered segments or flash varlen; shapes as :func:`_sliced_attention`."""
    batch, seq_len, num_heads, head_dim = q_t.shape
    n_rep = num_heads // k_t.shape[2]
    halves = []
    for heads, shifted in ((range(0, num_heads // 2), False), (shifted_heads(num_heads), True)):
        if len(heads) == 0:
            continue
        q_heads = torch.tensor(heads, dtype=torch.long, device=q_t.device)
        kv_heads = q_heads // n_rep  # query head h reads KV head h // n_rep, as repeat_kv does
        table = _segment_table(samples, group_size, shifted, wrap)
        if not table.size:  # every token is padding
            halves.append(q_t.new_zeros(batch, seq_len, len(heads), head_dim))
        elif backend == "flash":
            plan = _varlen_plan(table, q_t.device)
            halves.append(_flash_half(q_t, k_t, v_t, q_heads, kv_heads, plan, dropout, scaling, rules))
        else:
            plan = _sdpa_plan(table, q_t.device)
            halves.append(_gathered_half(q_t, k_t, v_t, q_heads, kv_heads, plan, dropout, scaling, rules))
    return torch.cat(halves, dim=2)


def packed_samples(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch_size: int,
                   q_len: int, kv_len: int) -> tuple | None:
    """The sample spans of every row (:func:`row_samples`) when some row holds more than one packed sample, else
    ``None`` (no row is packed: ordinary causal attention with the mask is right). Only whole-sequence forwards
    (``q_len == kv_len``) with ``position_ids`` can be packed; checking costs one O(B * N) pass and host sync."""
    if position_ids is None or q_len != kv_len or q_len < 2 or position_ids.shape[-1] != q_len:
        return None
    pos = position_ids[0] if position_ids.ndim == 3 else position_ids
    if not bool((torch.diff(pos, dim=-1) != 1).any()):
        return None
    samples = row_samples(attention_mask, position_ids, batch_size, q_len)
    return samples if any(len(spans) > 1 for spans in samples) else None


def packed_causal_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Full causal attention that never crosses a packed sample (registered as ``"packed_causal"``; also S2-Attn's
    eval mode). API and shapes of transformers' ``sdpa_attention_forward``.

    Rows holding several samples (``position_ids`` restarting, see :func:`packed_samples`; :func:`s2_attn_mask` gives
    ``None`` for them, never a tokens x tokens mask) are attended sample by sample: the samples gathered by size
    class for batched causal SDPA, or back to back in one flash-attn varlen call whose ``cu_seqlens`` are the sample
    boundaries (``S2AttnSettings.backend``). It is S2 with one segment per sample (a group of ``2 N`` tokens).
    Everything else (no packing, padding, a cache) is transformers' SDPA attention with the mask as given.
    """
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(SINKS_REFUSED)
    rules = ScoreRules.of(kwargs)
    samples = packed_samples(attention_mask, kwargs.get("position_ids"), query.shape[0], query.shape[2],
                             key.shape[2])
    if samples is None and not rules:
        mask = _eval_mask(attention_mask, query.shape[2], key.shape[2])
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError("packed rows or soft-capping with position_bias are not supported")
    dropout = dropout if module.training else 0.0
    if samples is None:  # whole rows (a mask, a cache) under the model's score rules: SDPA cannot soft-cap
        return _dense_with_rules(query, key, value, attention_mask, rules, dropout, scaling), None
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    settings = S2AttnSettings.from_config(getattr(module, "config", None))
    backend = select_backend(settings.backend, query)
    q_t, k_t, v_t = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    tree = tree_spans(samples, kwargs.get("position_ids"))  # prefix trees (sft.tree): roots as samples, then branches
    if tree is not None:
        samples = tree.kept
    if backend == "sdpa" and _few_samples(samples):  # one causal SDPA call per sample, all heads
        gqa = query.shape[1] != key.shape[1]
        out = _per_sample_attention(q_t, k_t, v_t, samples, lambda q, k, v: _grouped_causal(
            q, k, v, q.shape[1], dropout, scaling, gqa, rules))
    else:  # S2 with one segment per sample (a group of 2 N tokens)
        out = _gathered_attention(q_t, k_t, v_t, samples, 2 * query.shape[2], "none", backend, dropout, scaling,
                                  rules)
    if tree is not None:  # branches: SDPA with a causal mask over the prefix and themselves, whatever the backend
        out = _attend_branches(out, q_t, k_t, v_t, kwargs["position_ids"], tree.branches, None, dropout, scaling,
                               rules)
    return out.contiguous(), None


def _dense_with_rules(query, key, value, attention_mask, rules: ScoreRules, dropout: float,
                      scaling: float | None) -> torch.Tensor:
    """Causal attention over whole rows with soft-capping and/or a sliding window, ``(B, H, L, D)`` in,
    ``(B, L, H, D)`` out: the mask as transformers made it (4D boolean, the window in it already) or from a 2D
    padding mask, queries aligned to the end of the keys. Without a mask over a cache (``L < S``) the cache holds
    only keys the window allows (transformers' sliding-window cache layers), so only the whole-row case windows."""
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = _eval_mask(attention_mask, q_len, kv_len)
    if mask is not None and mask.dtype != torch.bool:  # an additive float mask: 0 where allowed
        mask = mask == 0
    if mask is None and q_len != kv_len:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
        rules = ScoreRules(rules.softcap)
    out = attend(query, key, value, dropout=dropout, scaling=scaling, enable_gqa=query.shape[1] != key.shape[1],
                 rules=rules, allowed=mask)
    return out.transpose(1, 2).contiguous()


SINKS_REFUSED = ("attention sinks (s_aux, gpt-oss) are not supported by s2_attn/packed_causal; train such a model "
                 "with s2_attn: false and packing: false")


def _check_supported(module, query, key, is_causal, position_bias, kwargs) -> None:
    """Reject, in training, inputs whose semantics S2-Attn would silently change."""
    if is_causal is False or (is_causal is None and not getattr(module, "is_causal", True)):
        raise ValueError("s2_attn is for causal decoders; this attention layer is not causal")
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"s2_attn trains on whole sequences: {query.shape[2]} queries but {key.shape[2]} keys "
                         "(was a filled cache passed while training?)")
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(SINKS_REFUSED)
    if position_bias is not None:
        raise NotImplementedError("s2_attn does not support position_bias in training")


def s2_attn_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function registered for ``"s2_attn"`` in ``AttentionMaskInterface`` (same arguments as ``sdpa_mask``).

    A forward over a whole sequence with a plain causal mask (``mask_function`` is transformers' causal one, no
    offsets, ``q_length == kv_length``, no sliding window or overlay) gets an O(N) answer: the 2D boolean padding mask
    ``(B, N)``, or ``None`` when no token is padding. Everything else is answered by transformers' ``sdpa`` mask
    function (a 4D boolean mask or ``None``), so eval mode sees exactly what ``sdpa`` would.
    """
    whole = (q_length == kv_length and kv_offset == 0 and not isinstance(q_offset, torch.Tensor) and q_offset == 0
             and kwargs.get("local_size") is None and not kwargs.get("use_vmap", False))
    plain = whole and mask_function is causal_mask_function
    if plain and attention_mask is None:
        return None
    if plain and attention_mask.ndim == 2 and attention_mask.shape[-1] == kv_length:
        return None if bool(attention_mask.all()) else attention_mask.to(torch.bool)
    if whole and attention_mask is None:
        try:
            if _is_packed_causal(mask_function, batch_size, q_length, kwargs.get("device")):
                return None  # packed rows: the attention functions find the samples in position_ids (O(N))
        except (IndexError, RuntimeError, TypeError) as e:  # a mask function that does not take index tensors
            _warn_dense_mask(f"{type(e).__name__}: {e}", batch_size, q_length, kv_length)
    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
        mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def _is_packed_causal(mask_function, batch_size: int, length: int, device) -> bool:
    """Is ``mask_function`` causal attention inside packed samples, as ``create_causal_mask`` composes it for rows
    whose ``position_ids`` restart (no cache, no 2D mask)? Without user overlays (``use_vmap``, excluded by the
    caller) the only other composition is a bidirectional block overlay (``block_sequence_ids``), in which some token
    sees the next one. Probed on O(N) index pairs: every token sees itself, none sees the next."""
    if length < 2:
        return False
    b = torch.arange(batch_size, device=device)[:, None]
    i = torch.arange(length - 1, device=device)[None, :]
    head = torch.zeros((), dtype=torch.long, device=device)
    sees_self = torch.as_tensor(mask_function(b, head, i, i))  # a mask function that takes no index tensors raises
    sees_next = torch.as_tensor(mask_function(b, head, i, i + 1))
    return bool(sees_self.all()) and not bool(sees_next.any())


def _warn_dense_mask(reason: str, batch_size: int, q_length: int, kv_length: int) -> None:
    """Say once per reason that the probe failed and what the fallback can cost: transformers' dense N x N mask."""
    if reason in _probe_failures:
        return
    _probe_failures.add(reason)
    gib = batch_size * q_length * kv_length / 2 ** 30
    log.warning("s2_attn mask: the packed-sample probe of the mask function failed (%s); falling back to "
                "transformers' sdpa mask, a dense boolean mask where it cannot skip it (%d x 1 x %d x %d, %.2f GiB "
                "at this size)",
                reason, batch_size, q_length, kv_length, gib)


def register() -> None:
    """Register ``s2_attention_forward`` under ``"s2_attn"`` and ``packed_causal_forward`` under
    ``"packed_causal"``, both with the mask function ``s2_attn_mask`` (idempotent; done on import)."""
    AttentionInterface.register(ATTN_NAME, s2_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, s2_attn_mask)
    AttentionInterface.register(PACKED_CAUSAL_NAME, packed_causal_forward)
    AttentionMaskInterface.register(PACKED_CAUSAL_NAME, s2_attn_mask)


register()
