"""S2-Attn (sft/s2attn.py) against a dense boolean-mask reference built here from the segment rule of docs/design.md.

The reference (`reference_allowed`) shares no code with the implementation: it labels every token with a segment id
and an order and compares labels, where the implementation slices or gathers segments for batched causal SDPA.
"""
from __future__ import annotations

import copy
import itertools
import uuid
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask, sliding_window_causal_mask_function
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sft import s2attn
from sft.s2attn import S2AttnSettings, row_samples, s2_attention_forward, s2_attn_mask, segment_spans, shifted_heads

ATOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------------
# The reference: a dense (B, H, N, N) boolean mask from the segment rule
# ----------------------------------------------------------------------------------------------------------------------


def reference_allowed(samples, seq_len, num_heads, group_size, wrap="none", shift=True, shifted_half="upper"):
    """May query i attend key j (B, H, N, N), per docs/design.md. `samples[b]` lists the (start, end) samples of row b.

    `shift=False` or `shifted_half="lower"` give deliberately wrong rules (tests must tell them apart)."""
    allowed = torch.zeros(len(samples), num_heads, seq_len, seq_len, dtype=torch.bool)
    for b, spans in enumerate(samples):
        for start, end in spans:
            length = end - start
            t = torch.arange(length)
            for h in range(num_heads):
                is_shifted = h >= num_heads // 2 if shifted_half == "upper" else h < num_heads // 2
                half = group_size // 2 if (shift and is_shifted) else 0
                if wrap == "roll" and 0 < half < length:
                    order = (t - half) % length  # Algorithm 1: roll(-G/2), then groups of G
                    segment = order // group_size
                else:
                    order = t
                    segment = (t + group_size - half) // group_size  # boundaries at half + k * G
                ok = (segment[:, None] == segment[None, :]) & (order[None, :] <= order[:, None])
                allowed[b, h, start:end, start:end] = ok
    return allowed


def reference_attention(q, k, v, allowed, scaling=None):
    """Dense SDPA under `allowed`; (B, N, H, D), zero for queries that may attend nothing (padding)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    lonely = ~allowed.any(-1, keepdim=True)  # padding queries: let them see themselves, then zero them
    mask = allowed | (lonely & torch.eye(q.shape[2], dtype=torch.bool))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling) * ~lonely
    return out.transpose(1, 2)


def attention_module(s2_settings, num_heads, num_kv_heads, training=True):
    module = torch.nn.Module()
    module.config = SimpleNamespace(s2_attn=s2_settings)
    module.is_causal = True
    module.num_key_value_groups = num_heads // num_kv_heads
    return module.train(training)


def qkv(batch, num_heads, num_kv_heads, seq_len, head_dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, num_heads, seq_len, head_dim)] + [(batch, num_kv_heads, seq_len, head_dim)] * 2
    return [torch.randn(shape, generator=gen).requires_grad_() for shape in shapes]


def right_padded(lengths, seq_len):
    mask = torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]
    return mask, tuple(((0, n),) for n in lengths)


def valid_tokens(samples, seq_len):
    valid = torch.zeros(len(samples), seq_len, dtype=torch.bool)
    for b, spans in enumerate(samples):
        for start, end in spans:
            valid[b, start:end] = True
    return valid


def compare(settings, q, k, v, mask, samples, group_size, position_ids=None, **reference_kwargs):
    """Outputs and q/k/v gradients of s2_attention_forward and of the reference; returns the largest differences."""
    batch, num_heads, seq_len, _ = q.shape
    module = attention_module(settings, num_heads, k.shape[1])
    out, weights = s2_attention_forward(module, q, k, v, mask, position_ids=position_ids)
    assert weights is None and out.shape == (batch, seq_len, num_heads, q.shape[-1])
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    rule = {"wrap": settings.get("wrap", "none"), **reference_kwargs}
    allowed = reference_allowed(samples, seq_len, num_heads, group_size, **rule)
    ref = reference_attention(q2, k2, v2, allowed)
    valid = valid_tokens(samples, seq_len)
    assert torch.isfinite(out).all() and (out[~valid] == 0).all()  # padding: zero output, no NaN
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * valid[:, :, None, None]
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    diffs = {"out": (out - ref)[valid].abs().max().item()}
    for name, a, b in (("dq", q, q2), ("dk", k, k2), ("dv", v, v2)):
        assert torch.isfinite(a.grad).all()
        diffs[name] = (a.grad - b.grad).abs().max().item()
    return diffs


# ----------------------------------------------------------------------------------------------------------------------
# Registration, settings and pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_import_registers_attention_and_mask_function_idempotently():
    assert ALL_ATTENTION_FUNCTIONS["s2_attn"] is s2_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["s2_attn"] is s2_attn_mask
    sizes = (len(AttentionInterface._global_mapping), len(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping))
    s2attn.register()
    s2attn.register()
    assert (len(AttentionInterface._global_mapping), len(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)) == sizes
    assert ALL_ATTENTION_FUNCTIONS["s2_attn"] is s2_attention_forward


def test_settings_defaults_group_size_and_all_problems_at_once():
    assert S2AttnSettings.from_config(SimpleNamespace()) == S2AttnSettings()
    assert S2AttnSettings.from_dict({}).group_size_for(4096) == 1024
    assert S2AttnSettings.from_dict({"group_size_ratio": 0.3}).group_size_for(10) == 3
    assert S2AttnSettings.from_dict({"group_size_ratio": 0.01}).group_size_for(10) == 1  # at least 1
    assert S2AttnSettings.from_dict({"group_size": 7}).group_size_for(100) == 7
    with pytest.raises(ValueError) as err:
        S2AttnSettings.from_dict({"group_size": 0, "group_size_ratio": 0.5, "wrap": "x", "backend": "y", "foo": 1})
    for fragment in ("unknown keys ['foo']", "not both", "group_size must", "wrap must", "backend must"):
        assert fragment in str(err.value)


def test_shifted_heads_are_the_upper_half_and_the_larger_one_when_odd():
    assert shifted_heads(8) == range(4, 8)
    assert shifted_heads(9) == range(4, 9)  # SmolLM2: 4 unshifted, 5 shifted
    assert shifted_heads(1) == range(0, 1)


@pytest.mark.parametrize("length, group, shifted, wrap, expected", [
    (10, 4, False, "none", [(0, 4), (4, 4), (8, 2)]),
    (10, 4, True, "none", [(0, 2), (2, 4), (6, 4)]),
    (11, 4, True, "none", [(0, 2), (2, 4), (6, 4), (10, 1)]),
    (8, 4, True, "roll", [(2, 4), (6, 4)]),  # second segment: tokens 6, 7, 0, 1
    (7, 5, True, "none", [(0, 2), (2, 5)]),  # odd G: shift 2
    (5, 16, True, "none", [(0, 5)]),  # G > N: one segment
    (5, 16, True, "roll", [(0, 5)]),  # shift >= N: no rotation
    (3, 1, True, "none", [(0, 1), (1, 1), (2, 1)]),  # G = 1: shift 0
    (0, 4, False, "none", []),
])
def test_segment_spans(length, group, shifted, wrap, expected):
    assert segment_spans(length, group, shifted, wrap) == expected


def test_row_samples_from_padding_packing_and_4d_masks():
    assert row_samples(torch.tensor([[0, 1, 1, 1, 0, 1]]), None, 1, 6) == (((1, 4), (5, 6)),)  # left, inner padding
    assert row_samples(torch.zeros(1, 3, dtype=torch.bool), None, 1, 3) == ((),)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]])
    assert row_samples(mask, position_ids, 2, 6) == (((0, 3), (3, 5)), ((0, 2), (2, 6)))
    assert row_samples(None, torch.arange(6)[None], 2, 6) == (((0, 6),), ((0, 6),))
    # A 4D mask is read on its diagonals: the sdpa mask of the same padding and packing gives the same samples.
    packed = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1]])
    dense = (torch.tril(torch.ones(6, 6, dtype=torch.bool))[None]
             & mask.bool()[:, None, :] & (packed[:, :, None] == packed[:, None, :]))[:, None]
    assert row_samples(dense, None, 2, 6) == (((0, 3), (3, 5)), ((0, 2), (2, 6)))


def test_slices_serve_one_sample_per_row_from_token_0_and_roll_only_without_padding():
    assert s2attn._is_contiguous((((0, 24),), ((0, 17),), ()), 24, "none")
    assert not s2attn._is_contiguous((((0, 24),), ((0, 17),)), 24, "roll")
    assert s2attn._is_contiguous((((0, 24),), ((0, 24),)), 24, "roll")
    assert not s2attn._is_contiguous((((0, 10), (10, 24)),), 24, "none")  # packed
    assert not s2attn._is_contiguous((((3, 24),),), 24, "none")  # left padding


def test_mask_function_is_o_n_for_whole_sequences_and_sdpa_otherwise():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert s2_attn_mask(2, 3, 3, attention_mask=None) is None
    assert s2_attn_mask(2, 3, 3, attention_mask=torch.ones(2, 3, dtype=torch.bool)) is None
    assert torch.equal(s2_attn_mask(2, 3, 3, attention_mask=mask), mask)
    # decoding with a cache: exactly transformers' sdpa mask
    cached = s2_attn_mask(2, 1, 3, q_offset=2, attention_mask=mask)
    assert torch.equal(cached, sdpa_mask(2, 1, 3, q_offset=2, attention_mask=mask))


def test_a_failed_packed_probe_warns_once_with_the_reason_and_the_dense_masks_size(caplog, monkeypatch):
    """A mask function written for transformers' 4D broadcast layout cannot be probed on O(N) index pairs: the
    dense mask still comes back (it is right), but not silently."""
    monkeypatch.setattr(s2attn, "_probe_failures", set())

    def four_d_causal(b, h, q, kv):  # reads the 4D layout sdpa_mask passes: (B,1,1,1), (1,1,1,1), (1,1,Q,1), (1,1,1,K)
        return (kv <= q).expand(b.shape[0], 1, q.shape[2], kv.shape[3])

    with caplog.at_level("WARNING", logger="sft.s2attn"):
        first = s2_attn_mask(2, 4, 4, mask_function=four_d_causal, attention_mask=None)
        s2_attn_mask(2, 4, 4, mask_function=four_d_causal, attention_mask=None)
    assert first == sdpa_mask(2, 4, 4, mask_function=four_d_causal, attention_mask=None)  # None: is_causal
    warned = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()]
    assert len(warned) == 1 and "IndexError" in warned[0] and "2 x 1 x 4 x 4" in warned[0] and "GiB" in warned[0]


# ----------------------------------------------------------------------------------------------------------------------
# Attention function against the reference
# ----------------------------------------------------------------------------------------------------------------------

CASES = {
    # name: (num_heads, num_kv_heads, seq_len, lengths, settings, G)
    "gqa-odd-heads-right-padding": (9, 3, 24, (24, 17, 5), {"group_size": 8}, 8),
    "g-does-not-divide-n": (9, 3, 26, (26, 19), {"group_size": 8}, 8),
    "odd-g": (9, 3, 23, (23, 12), {"group_size": 7}, 7),
    "g-larger-than-n": (9, 3, 24, (24, 15), {"group_size": 40}, 40),
    "ratio-default-mha": (8, 8, 24, (24, 21), {}, 6),
    "few-heads": (3, 1, 20, (20, 9), {"group_size": 6}, 6),
    "no-padding": (9, 3, 24, (24, 24), {"group_size": 8}, 8),
    "gqa-halves-on-kv-boundary": (8, 2, 24, (24, 13), {"group_size": 8}, 8),  # SDPA enable_gqa
}


@pytest.fixture(params=["auto", "per-sample", "gather"])
def path(request, monkeypatch):
    """"auto": slices of the sequence where the batch allows it (one sample per row from token 0), else each sample's
    slice on its own (few samples), else gathers; "per-sample": each sample's slice on its own for every batch;
    "gather": the general gather path for every batch."""
    if request.param != "auto":
        monkeypatch.setattr(s2attn, "_is_contiguous", lambda *args: False)
    if request.param == "gather":
        monkeypatch.setattr(s2attn, "_few_samples", lambda *args: False)
    return request.param


@pytest.mark.parametrize("wrap", ["none", "roll"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_gradients_match_reference(case, wrap, path):
    num_heads, num_kv_heads, seq_len, lengths, settings, group_size = CASES[case]
    q, k, v = qkv(len(lengths), num_heads, num_kv_heads, seq_len)
    mask, samples = right_padded(lengths, seq_len)
    diffs = compare({**settings, "wrap": wrap}, q, k, v, mask, samples, group_size)
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("wrap", ["none", "roll"])
def test_packed_rows_with_padding_match_reference(wrap, path):
    position_ids = torch.tensor([list(range(10)) + list(range(14)),
                                 list(range(5)) + list(range(11)) + list(range(8))])
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 21:] = False  # the last sample of row 1 is cut by padding
    samples = (((0, 10), (10, 24)), ((0, 5), (5, 16), (16, 21)))
    q, k, v = qkv(2, 9, 3, 24, seed=3)
    diffs = compare({"group_size": 6, "wrap": wrap}, q, k, v, mask, samples, 6, position_ids=position_ids)
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("wrap", ["none", "roll"])
def test_left_padding_starts_the_segments_at_the_first_real_token(wrap):
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, :7] = False
    q, k, v = qkv(2, 9, 3, 20, seed=8)
    diffs = compare({"group_size": 6, "wrap": wrap}, q, k, v, mask, (((0, 20),), ((7, 20),)), 6)
    assert max(diffs.values()) < ATOL, diffs


def test_four_d_mask_is_read_like_the_padding_mask():
    q, k, v = qkv(2, 9, 3, 16, seed=4)
    mask, samples = right_padded((16, 11), 16)
    dense = sdpa_mask(2, 16, 16, attention_mask=mask, allow_is_causal_skip=False)
    diffs = compare({"group_size": 6}, q, k, v, dense, samples, 6)
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("wrap", ["none", "roll"])
@pytest.mark.parametrize("group_size", [32, 33, 100])
def test_group_of_at_least_2n_is_plain_causal_attention(group_size, wrap):
    q, k, v = qkv(2, 9, 3, 16, seed=5)
    module = attention_module({"group_size": group_size, "wrap": wrap}, 9, 3)
    out, _ = s2_attention_forward(module, q, k, v, None)
    causal = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True)
    torch.testing.assert_close(out, causal.transpose(1, 2), atol=ATOL, rtol=0)


def test_eval_mode_is_dense_causal_attention():
    q, k, v = qkv(2, 9, 3, 24, seed=6)
    mask, _ = right_padded((24, 13), 24)
    module = attention_module({"group_size": 6}, 9, 3, training=False)
    out, _ = s2_attention_forward(module, q, k, v, mask)
    dense = sdpa_mask(2, 24, 24, attention_mask=mask, allow_is_causal_skip=False)
    expected, _ = sdpa_attention_forward(module, q, k, v, dense)
    torch.testing.assert_close(out, expected)
    trained, _ = s2_attention_forward(module.train(), q, k, v, mask)
    assert (trained - expected).abs().max() > 1e-2  # train mode really is sparse


@pytest.mark.parametrize("wrong", [{"shift": False}, {"shifted_half": "lower"}, {"wrap": "roll"}])
def test_parity_check_detects_wrong_rules(wrong):
    """The comparison above is sharp: a reference with no shift, the wrong half shifted, or the other wrap mode
    does not match."""
    q, k, v = qkv(3, 9, 3, 24)
    mask, samples = right_padded((24, 17, 5), 24)
    diffs = compare({"group_size": 8}, q, k, v, mask, samples, 8, **wrong)
    assert diffs["out"] > 1e-2, diffs


def test_flash_backend_runs_segments_back_to_back(monkeypatch):
    """The varlen path (cu_seqlens of the segments), checked with a stand-in for flash_attn_varlen_func."""
    calls = []

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and causal and q.shape == k.shape
        calls.append(cu_q)
        bounds = cu_q.tolist()
        return torch.cat([F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v)),
                                                         is_causal=True, scale=softmax_scale).transpose(0, 1)
                          for a, b in itertools.pairwise(bounds)])

    monkeypatch.setattr(s2attn, "_flash_varlen_func", lambda: fake_varlen)
    assert s2attn.select_backend("auto", torch.zeros(1)) == "sdpa"  # auto: flash only on CUDA fp16/bf16
    q, k, v = qkv(2, 9, 3, 24, seed=7)
    mask, samples = right_padded((24, 14), 24)
    diffs = compare({"group_size": 8, "backend": "flash"}, q, k, v, mask, samples, 8)
    assert max(diffs.values()) < ATOL, diffs
    assert len(calls) == 2  # one call per head half
    monkeypatch.setattr(s2attn, "_flash_varlen_func", lambda: None)
    with pytest.raises(ImportError):
        s2attn.select_backend("flash", q)


def test_training_rejects_what_it_would_silently_change():
    q, k, v = qkv(1, 9, 3, 8)
    module = attention_module({"wrap": "roll"}, 9, 3)
    with pytest.raises(NotImplementedError, match="sliding-window"):
        s2_attention_forward(module, q, k, v, None, sliding_window=4)
    with pytest.raises(NotImplementedError, match="attention sinks"):
        s2_attention_forward(module, q, k, v, None, s_aux=torch.zeros(9))
    with pytest.raises(NotImplementedError, match="attention sinks"):
        s2attn.packed_causal_forward(module.eval(), q, k, v, None, s_aux=torch.zeros(9))
    with pytest.raises(ValueError, match="whole sequences"):
        s2_attention_forward(module.train(), q[:, :, :1], k, v, None)


def scored_reference(q, k, v, allowed, softcap=None, window=None):
    """The eager formula (Gemma2's) under `allowed` and the sliding window, in float64; (B, N, H, D), zeros where a
    query may attend nothing."""
    n_rep = q.shape[1] // k.shape[1]
    q, k, v = (x.double() for x in (q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)))
    if window is not None:
        idx = torch.arange(q.shape[2])
        allowed = allowed & (idx[:, None] - idx[None, :] < window)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize(("softcap", "window", "group_size"), [
    (2.0, None, 6), (None, 4, 6), (None, 6, 6), (None, 9, 6), (1.5, 3, 6), (None, 3, 48), (3.0, None, 48)])
def test_softcap_and_sliding_window_match_a_dense_reference(softcap, window, group_size, path):
    """S2 under a window W >= G is S2; W < G is S2 intersected with the window; soft-capping is the eager formula.
    Packed rows with padding, float64, outputs and gradients; G = 48 >= 2 N is plain causal attention."""
    position_ids = torch.tensor([list(range(10)) + list(range(14)), list(range(5)) + list(range(11)) + list(range(8))])
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 21:] = False
    samples = (((0, 10), (10, 24)), ((0, 5), (5, 16), (16, 21)))
    q, k, v = (x.detach().double().requires_grad_() for x in qkv(2, 9, 3, 24, seed=3))
    module = attention_module({"group_size": group_size}, 9, 3)
    out, _ = s2_attention_forward(module, q, k, v, mask, position_ids=position_ids, softcap=softcap,
                                  sliding_window=window)
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = scored_reference(q2, k2, v2, reference_allowed(samples, 24, 9, group_size), softcap, window)
    valid = valid_tokens(samples, 24)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * upstream * valid[:, :, None, None]).sum().backward()
    (ref * upstream * valid[:, :, None, None]).sum().backward()
    assert (out - ref)[valid].abs().max() < 1e-12
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert (a.grad - b.grad).abs().max() < 1e-12
    plain = scored_reference(q2, k2, v2, reference_allowed(samples, 24, 9, group_size))
    bites = softcap is not None or window < min(group_size, 14)  # 14: the longest sample
    assert ((plain - ref)[valid].abs().max() > 1e-3) == bites  # W >= G: exactly S2


@pytest.mark.parametrize("window", [None, 5])
def test_eval_mode_soft_caps_packed_and_unpacked_rows(window):
    """Eval mode: packed rows (samples apart, the window inside each) and unpacked rows with transformers' own sdpa
    mask; soft-capped by the eager formula, not refused with transformers' "sdpa does not support softcap"."""
    q, k, v = (x.detach().double() for x in qkv(2, 9, 3, 24, seed=6))
    module = attention_module({}, 9, 3, training=False)
    samples = (((0, 10), (10, 24)), ((0, 24),))
    position_ids = torch.tensor([list(range(10)) + list(range(14)), list(range(24))])
    out, _ = s2_attention_forward(module, q, k, v, None, position_ids=position_ids, softcap=2.0, sliding_window=window)
    ref = scored_reference(q, k, v, reference_allowed(samples, 24, 9, 48), 2.0, window)
    assert (out - ref).abs().max() < 1e-12
    mask, samples = right_padded((24, 13), 24)
    kwargs = {} if window is None else {"local_size": window, "mask_function": sliding_window_causal_mask_function(
        window)}
    dense = s2_attn_mask(2, 24, 24, attention_mask=mask, **kwargs)
    out, _ = s2_attention_forward(module, q, k, v, dense, softcap=2.0, sliding_window=window)
    ref = scored_reference(q, k, v, reference_allowed(samples, 24, 9, 48), 2.0, window)
    valid = valid_tokens(samples, 24)
    assert (out - ref)[valid].abs().max() < 1e-12


# ----------------------------------------------------------------------------------------------------------------------
# A tiny Llama built with attn_implementation="s2_attn"
# ----------------------------------------------------------------------------------------------------------------------


def tiny_config(**s2_settings):
    config = LlamaConfig(vocab_size=64, hidden_size=72, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                         attention_dropout=0.0, use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config.s2_attn = s2_settings
    return config


def build(config, attn_implementation, like=None):
    """A model with its *own* config: transformers reads the attention implementation from the config at every
    forward, so two models sharing one config object would silently run the same attention."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn_implementation)
    if like is not None:
        model.load_state_dict(like.state_dict())
    return model


@pytest.fixture
def reference_attention_name():
    """Registers the reference under a fresh name: `register(samples, group_size, **rule)` returns the name."""
    names = []

    def register(samples, group_size, **rule):
        def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
            allowed = reference_allowed(samples, query.shape[2], query.shape[1], group_size, **rule)
            return reference_attention(query, key, value, allowed, scaling=scaling).contiguous(), None

        names.append(f"s2_reference_{uuid.uuid4().hex[:8]}")
        AttentionInterface.register(names[-1], forward)
        return names[-1]

    yield register
    for name in names:
        AttentionInterface._global_mapping.pop(name, None)


def batch_with_right_padding(lengths, seq_len, seed=0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 64, (len(lengths), seq_len), generator=gen)
    mask, samples = right_padded(lengths, seq_len)
    input_ids[~mask] = 0
    labels = input_ids.masked_fill(~mask, -100)
    return input_ids, mask.long(), labels, samples


def test_model_trains_with_s2_attn_exactly_like_the_reference(reference_attention_name):
    config = tiny_config()  # default group_size_ratio 0.25: G = 6 for N = 24
    input_ids, mask, labels, samples = batch_with_right_padding((24, 17, 9), 24)
    s2_model = build(config, "s2_attn").train()
    ref_model = build(config, reference_attention_name(samples, 6), like=s2_model).train()
    wrong_model = build(config, reference_attention_name(samples, 6, shifted_half="lower"), like=s2_model).train()
    assert s2_model.config._attn_implementation == "s2_attn"
    assert ref_model.config is not s2_model.config

    out = s2_model(input_ids=input_ids, attention_mask=mask, labels=labels)
    ref = ref_model(input_ids=input_ids, attention_mask=mask, labels=labels)
    wrong = wrong_model(input_ids=input_ids, attention_mask=mask, labels=labels)
    valid = mask.bool()
    torch.testing.assert_close(out.logits[valid], ref.logits[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss)
    assert (out.logits[valid] - wrong.logits[valid]).abs().max() > 1e-3  # the comparison can fail
    out.loss.backward()
    ref.loss.backward()
    for (name, p), q in zip(s2_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_model_separates_packed_samples(reference_attention_name):
    config = tiny_config(group_size=4)
    sample_lengths = (9, 15)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 64, (1, sum(sample_lengths)), generator=gen)
    position_ids = torch.cat([torch.arange(n) for n in sample_lengths])[None]
    samples = (((0, 9), (9, 24)),)
    s2_model = build(config, "s2_attn").train()
    ref_model = build(config, reference_attention_name(samples, 4), like=s2_model).train()
    packed = s2_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    torch.testing.assert_close(packed, ref_model(input_ids=input_ids, position_ids=position_ids).logits)
    # each sample alone gives the same logits: nothing crosses the sample boundary
    for start, end in samples[0]:
        alone = s2_model(input_ids=input_ids[:, start:end], position_ids=position_ids[:, start:end]).logits
        torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=1e-5)
    # transformers marks packed samples only without a cache; S2-Attn also splits on position_ids with one
    torch.testing.assert_close(s2_model(input_ids=input_ids, position_ids=position_ids, use_cache=True).logits, packed)


def test_padded_row_equals_the_row_alone():
    config = tiny_config(group_size=4)
    input_ids, mask, _, _ = batch_with_right_padding((20, 11), 20, seed=2)
    model = build(config, "s2_attn").train()
    batch = model(input_ids=input_ids, attention_mask=mask).logits
    alone = model(input_ids=input_ids[1:, :11]).logits
    torch.testing.assert_close(batch[1:, :11], alone, atol=1e-5, rtol=1e-5)


def test_model_in_eval_mode_is_the_sdpa_model():
    config = tiny_config(group_size=4)
    input_ids, mask, _, _ = batch_with_right_padding((20, 11), 20, seed=3)
    s2_model = build(config, "s2_attn").eval()
    sdpa_model = build(config, "sdpa", like=s2_model).eval()
    valid = mask.bool()
    torch.testing.assert_close(s2_model(input_ids=input_ids, attention_mask=mask).logits[valid],
                               sdpa_model(input_ids=input_ids, attention_mask=mask).logits[valid])
    # generation: left padding, a cache, decoding masks with offsets
    prompt = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    prompt_mask = (prompt != 0).long()
    generate = dict(attention_mask=prompt_mask, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(s2_model.generate(prompt, **generate), sdpa_model.generate(prompt, **generate))


def test_from_pretrained_with_s2_attn_keeps_the_settings(tmp_path):
    build(tiny_config(group_size=4, wrap="roll"), "sdpa").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="s2_attn")
    assert model.config._attn_implementation == "s2_attn"
    assert S2AttnSettings.from_config(model.config) == S2AttnSettings(group_size=4, wrap="roll")


def test_packed_route_benchmark_times_both_routes(tmp_path):
    """benchmarks/s2attn_packed.py at a tiny size: one row per sample count, both routes beside the sliced path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/s2attn_packed.py"
    spec = importlib.util.spec_from_file_location("s2attn_packed_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "routes.md"
    assert bench.main(["--length", "64", "--samples", "1", "4", "--repeats", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 4"]
    assert rows[0].endswith("| – | – |") and "–" not in rows[1]
    assert s2attn._few_samples((((0, 2),),))  # the benchmark put the route rule back
