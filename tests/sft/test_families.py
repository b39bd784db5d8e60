"""Every model family the README names, on tiny random configs in float64 (issue 21: the suite built only Llama).

For each family: S2-Attn in training against a dense reference attention (the segment rule of
``tests/sft/test_s2attn.py`` with the family's own scaling, soft-capping and sliding windows) through the whole model,
logits and every gradient; eval mode and packed rows against transformers' eager attention on each sample alone;
LoRA+ with the default targets (the family's attention projections); linear position interpolation written into the
config, saved and loaded again. A family transformers lacks is skipped with the reason.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM

import sft.s2attn  # noqa: F401  (registers s2_attn and packed_causal)
from sft.model import add_lora_plus, apply_rope_scaling, context_length, default_lora_targets
from tests.sft.test_s2attn import reference_allowed

VOCAB, N, G = 64, 24, 8  # tokens a row and the S2 group: G < N so the segments bite; windows of 5 < G bite too
ATTENTION = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                 num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=64)

#: family -> (config class path, extra config fields); soft caps and windows small enough to change the scores
FAMILIES = {
    "llama": ("transformers.LlamaConfig", {}),
    "qwen2": ("transformers.Qwen2Config", {}),
    "qwen3": ("transformers.Qwen3Config", {"head_dim": 8}),
    "gemma": ("transformers.GemmaConfig", {"head_dim": 8}),
    "gemma2": ("transformers.Gemma2Config", {"head_dim": 8, "attn_logit_softcapping": 2.0,
                                             "final_logit_softcapping": 5.0, "sliding_window": 5,
                                             "query_pre_attn_scalar": 8}),
    "gemma3_text": ("transformers.Gemma3TextConfig", {"head_dim": 8, "sliding_window": 5, "query_pre_attn_scalar": 8,
                                                      "layer_types": ["sliding_attention", "full_attention"]}),
    "olmo2": ("transformers.Olmo2Config", {}),
    "granite": ("transformers.GraniteConfig", {"attention_multiplier": 0.3, "embedding_multiplier": 2.0,
                                               "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "cohere": ("transformers.CohereConfig", {"use_qk_norm": False, "logit_scale": 0.5}),
    "smollm3": ("transformers.SmolLM3Config", {"no_rope_layers": [1, 0], "pad_token_id": 0}),
    "mistral": ("transformers.MistralConfig", {"sliding_window": 5, "head_dim": 8}),
    "phi3": ("transformers.Phi3Config", {"pad_token_id": 0}),
    "gpt_neox": ("transformers.GPTNeoXConfig", {"num_key_value_heads": None, "rotary_pct": 0.5}),
}


def make_config(family: str):
    path, extra = FAMILIES[family]
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        pytest.skip(f"transformers has no {name}")
    fields = {**ATTENTION, **extra}
    fields = {k: v for k, v in fields.items() if v is not None}
    config = cls(**fields)
    config.tie_word_embeddings = True
    return config


def build(family: str, attn: str, *, s2: dict | None = None, seed: int = 0):
    config = make_config(family)
    if s2 is not None:
        config.s2_attn = s2
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).double()


def reference_s2(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None,
                 sliding_window=None, **kwargs):
    """Dense reference of S2-Attn for whole unpadded rows: the boolean segment mask, the layer's scaling, the eager
    soft-cap formula and the window, in the dtype given (float64 here)."""
    batch, heads, length, dim = query.shape
    allowed = reference_allowed((((0, length),),) * batch, length, heads, G)
    if sliding_window is not None:
        idx = torch.arange(length)
        allowed = allowed & (idx[:, None] - idx[None, :] < sliding_window)
    n_rep = heads // key.shape[1]
    k, v = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    scores = query @ k.transpose(-1, -2) * (dim ** -0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    return (probs @ v).transpose(1, 2).contiguous(), None


AttentionInterface.register("s2_reference", reference_s2)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(params=list(FAMILIES))
def family(request):
    make_config(request.param)  # skips where transformers lacks it
    return request.param


def test_s2_training_matches_a_dense_reference_through_the_whole_model(family):
    ids = tokens(2, N)
    results = []
    for attn in ("s2_attn", "s2_reference"):
        model = build(family, attn, s2={"group_size": G}).train()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results.append((out.logits.detach(), out.loss.detach(), grads(model)))
    (logits, loss, got), (ref_logits, ref_loss, expected) = results
    torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(loss, ref_loss, atol=1e-12, rtol=1e-10)
    assert got.keys() == expected.keys() and got
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-10, rtol=1e-8, msg=name)
    # the segments bite: full causal attention gives other logits
    dense = build(family, "eager").train()(input_ids=ids).logits.detach()
    assert (dense - ref_logits).abs().max() > 1e-6


#: transformers' eager attention takes its softmax in float32 even for float64 inputs: agreement to ~1e-7, where the
#: defects it must catch (soft-capping dropped: 1.8e-3; a window ignored) are far larger
EAGER_TOL = 1e-6


def test_eval_mode_and_packed_rows_match_eager_attention_on_each_sample_alone(family):
    """Eval mode of s2_attn (and packed_causal) over a packed row of two samples equals transformers' eager attention
    (its own soft-capping and windows) on each sample alone."""
    first, second = tokens(1, 14, seed=2), tokens(1, 10, seed=3)
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(14), torch.arange(10)])[None]
    eager = build(family, "eager").eval()
    with torch.no_grad():
        alone = torch.cat([eager(input_ids=first).logits, eager(input_ids=second).logits], dim=1)
        whole = eager(input_ids=packed).logits
        for attn in ("s2_attn", "packed_causal"):
            model = build(family, attn, s2={"group_size": G}).eval()
            got = model(input_ids=packed, position_ids=position_ids).logits
            torch.testing.assert_close(got, alone, atol=EAGER_TOL, rtol=EAGER_TOL, msg=attn)
            unpacked = model(input_ids=packed).logits  # one sample: dense causal, as eager
            torch.testing.assert_close(unpacked, whole, atol=EAGER_TOL, rtol=EAGER_TOL, msg=attn)
    assert (whole[:, 14:] - alone[:, 14:]).abs().max() > 1e-3  # packing matters: the second sample sees the first


def test_lora_plus_targets_the_family_attention_projections_by_default(family):
    model = build(family, "s2_attn", s2={"group_size": G})
    targets = default_lora_targets(model)
    attention = {name for name, module in model.named_modules() if type(module).__name__.endswith("Attention")}
    assert targets
    model = add_lora_plus(model, r=2, alpha=4)
    lora = [name for name, _ in model.named_parameters() if "lora_A" in name]
    assert lora and all(any(name.startswith("base_model.model." + a + ".") for a in attention) for name in lora)
    assert {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in lora} == set(targets)
    ids = tokens(1, N)
    model.train()(input_ids=ids, labels=ids).loss.backward()
    trained = grads(model)
    assert any("lora_B" in n for n in trained) and any("embed" in n for n in trained)
    assert any("norm" in n or "layernorm" in n for n in trained)


def test_position_interpolation_survives_save_and_reload(family, tmp_path):
    config = make_config(family)
    before = context_length(config)
    rope = apply_rope_scaling(config, 2 * before, kind="linear")
    assert rope["factor"] == pytest.approx(2.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).double()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert context_length(again.config) == 2 * before
    assert again.config.rope_parameters == model.config.rope_parameters
    ids = tokens(1, N)
    with torch.no_grad():  # the rotary tables are rebuilt in float32 on load: agreement to ~1e-7
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    # the scaling changes the model: the unscaled one gives other logits at the same weights
    plain = AutoModelForCausalLM.from_config(make_config(family)).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() > 1e-6



@pytest.mark.parametrize("attn", ["s2_attn", "packed_causal"])
def test_tree_rows_give_each_branch_the_logits_of_its_sample_alone(family, attn):
    """A tree row (one document, two questions as branches, issue 22) in training and eval mode: every branch token
    gets the logits its sample has alone, with the family's soft-capping and windows (Mistral's and Gemma2's window of
    5 bites inside a branch; the branches cross the S2 segment boundary at 16)."""
    from sft.tree import tree_row

    doc, first, second = (tokens(1, n, seed=s)[0].tolist() for n, s in ((14, 4), (5, 5), (4, 6)))
    samples = [{"input_ids": doc + q, "labels": [-100] * 15 + q[1:]} for q in (first, second)]
    row = tree_row(samples, [(2, 14)])
    ids, position_ids = torch.tensor([row["input_ids"]]), torch.tensor([row["position_ids"]])
    assert position_ids[0, 19:].tolist() == [14, 15, 16, 17]  # the second sample is a branch, not a whole sample
    model = build(family, attn, s2={"group_size": G})
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            got = model(input_ids=ids, position_ids=position_ids).logits[0]
            alone = [model(input_ids=torch.tensor([s["input_ids"]])).logits[0] for s in samples]
        torch.testing.assert_close(got[:19], alone[0], atol=1e-10, rtol=1e-9, msg=mode)
        torch.testing.assert_close(got[19:], alone[1][14:], atol=1e-10, rtol=1e-9, msg=mode)
