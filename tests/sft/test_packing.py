"""sft.packing: first-fit-decreasing rows, the packed batch contract, sorted batching, and the proof by equality —
a packed row of k samples gives each sample the loss and the gradients (every trainable parameter: LoRA, embeddings,
norms) it has alone, with S2-Attn and with full attention, and a model whose samples see each other fails the test."""
from __future__ import annotations

import random
import uuid

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoModelForCausalLM, TrainerCallback
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from schemas.errors import DataError
from schemas.train import TrainConfig
from sft import s2attn
from sft.data import IGNORE_INDEX, PadCollator
from sft.trainer import LongLoRATrainer, _Throughput, batch_counts
from sft.packing import (REAL_TOKENS, PackedCollator, arrange, first_fit_decreasing, pack_samples, padding_fraction,
                         sorted_batch_order)
from tests.sft.conftest import tiny_llama_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: one thread is faster, and much faster on a loaded machine (no thread barriers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------------
# First-fit-decreasing and the layouts
# ----------------------------------------------------------------------------------------------------------------------


def test_first_fit_decreasing_places_longest_first_into_the_first_row_with_room():
    lengths = [5, 9, 3, 7, 2, 6]
    rows = first_fit_decreasing(lengths, 10)
    # 9 -> r0; 7 -> r1; 6 -> r2; 5 -> r3; 3 -> r1 (r0 has 1 left); 2 -> r2
    assert [[lengths[i] for i in row] for row in rows] == [[9], [7, 3], [6, 2], [5]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_fit_decreasing_keeps_every_sample_once_within_capacity_and_is_deterministic(seed):
    gen = random.Random(seed)
    lengths = [gen.randint(1, 100) for _ in range(300)]
    rows = first_fit_decreasing(lengths, 128, seed)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert rows == first_fit_decreasing(lengths, 128, seed)
    # first fit: no later row's sample would have fitted into an earlier row when it was placed: at least near-optimal
    assert len(rows) <= 1.25 * sum(lengths) / 128 + 1


def test_seeds_break_ties_differently_and_long_samples_are_refused():
    lengths = [4] * 10
    assert first_fit_decreasing(lengths, 8, seed=0) != first_fit_decreasing(lengths, 8, seed=1)
    with pytest.raises(DataError, match="longer than max_length 8"):
        first_fit_decreasing([3, 9], 8)


def test_packed_row_restarts_positions_and_never_targets_a_first_token():
    sft = {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}
    text = {"input_ids": [9, 10, 11]}  # extend mode: labels are the inputs
    row = pack_samples([sft, text, sft])
    assert row["input_ids"] == [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8]
    assert row["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]
    assert row["labels"] == [-100, -100, 7, 8, -100, 10, 11, -100, -100, 7, 8]
    assert row["length"] == 11 and row["samples"] == 3


def test_collator_pads_packed_rows_with_a_sample_of_their_own_and_pads_held_out_samples_as_before():
    rows = [pack_samples([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}]), pack_samples([{"input_ids": [3, 4]}])]
    batch = PackedCollator(pad_id=0, max_length=8)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids", REAL_TOKENS}  # no attention_mask (batch contract)
    assert int(batch[REAL_TOKENS]) == 7  # 5 + 2 tokens of rows; 3 of padding
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]]
    plain = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    assert PackedCollator(pad_id=0)(plain).keys() == PadCollator(pad_id=0)(plain).keys()


def test_trainer_counts_the_padding_of_packed_batches_and_hides_the_count_from_the_model():
    rows = [pack_samples([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}]), pack_samples([{"input_ids": [3, 4]}])]
    batch = PackedCollator(pad_id=0)(rows)
    items, supervised, real, computed = batch_counts(batch, "token").tolist()
    assert (real, computed, supervised) == (7, 10, 4)  # padding fraction 3/10, not 0

    class Trainer:  # the parts of LongLoRATrainer.get_batch_samples that run without a model
        loss_reduction, args, _window = "token", type("A", (), {"world_size": 1})(), _Throughput()

    batches, count = LongLoRATrainer.get_batch_samples(Trainer(), iter([batch]), 1, "cpu")
    assert REAL_TOKENS not in batches[0] and int(count) == 4 and Trainer._window.counts.tolist()[2:] == [7, 10]


def test_sorted_batches_hold_similar_lengths_in_a_shuffled_batch_order():
    lengths = [50, 10, 40, 20, 30, 60, 15, 45]
    order = sorted_batch_order(lengths, 2, seed=3)
    batches = [sorted(lengths[i] for i in order[k:k + 2]) for k in range(0, 8, 2)]
    assert sorted(batches) == [[10, 15], [20, 30], [40, 45], [50, 60]]
    assert batches != sorted(batches)  # the batch order is shuffled (seed 3)
    assert sorted(order) == list(range(8)) and order == sorted_batch_order(lengths, 2, seed=3)
    # a last, smaller batch stays last: every batch of 3 read in order is one batch as cut
    order = sorted_batch_order(lengths, 3, seed=1)
    assert order[-2:] == [0, 5] and padding_fraction([lengths[i] for i in order], 3) < 0.2


def test_arrange_reports_rows_samples_per_row_and_padding():
    import datasets

    lengths = [60, 50, 40, 30, 20, 10, 64]
    data = datasets.Dataset.from_dict({"input_ids": [[7] * n for n in lengths], "length": lengths})
    rows, stats = arrange(data, lengths, packing=True, batching="grouped", max_length=64, batch_size=1, seed=0)
    assert len(rows) == stats.rows == 5 and stats.samples == 7 and stats.tokens == sum(lengths)
    assert stats.samples_per_row_max == 2 and stats.padding_fraction == 0.0
    assert stats.fill == pytest.approx(sum(lengths) / (5 * 64), abs=1e-6)
    assert sorted(sum(rows[r]["position_ids"].count(0) for r in range(len(rows))) for _ in [0]) == [7]
    assert "packed 7 samples into 5 rows" in stats.summary()
    _, sorted_stats = arrange(data, lengths, packing=False, batching="sorted", max_length=64, batch_size=2, seed=0)
    assert 0 < sorted_stats.padding_fraction < 0.1
    assert padding_fraction([4, 2, 3], 2) == pytest.approx(1 - 9 / 11)
    with pytest.raises(DataError, match="holds no samples"):
        arrange(data.select([]), [], packing=True, batching="grouped", max_length=64, batch_size=1, seed=0)


def test_config_packing_batching_and_the_old_group_by_length():
    assert TrainConfig().batching == "grouped" and not TrainConfig().packing
    assert TrainConfig(group_by_length=False).batching == "random"
    assert TrainConfig.model_validate({"group_by_length": True}).batching == "grouped"
    with pytest.raises(ValueError, match="contradicts batching: sorted"):
        TrainConfig(group_by_length=True, batching="sorted")
    with pytest.raises(ValueError, match="alternative to packing"):
        TrainConfig(packing=True, batching="sorted")


# ----------------------------------------------------------------------------------------------------------------------
# Proof by equality: packed row == each sample alone (loss and every trainable gradient), float64
# ----------------------------------------------------------------------------------------------------------------------

#: Three samples of one packed row: an sft sample (prompt masked), a plain-text one (labels = inputs), another sft one.
SAMPLE_LENGTHS = (21, 13, 30)
GROUP = 8  # S2 group: several segments per sample, shifted segments crossing G/2 boundaries


def samples(seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(SAMPLE_LENGTHS):
        ids = torch.randint(3, 400, (n,), generator=gen).tolist()
        labels = None if k == 1 else [IGNORE_INDEX] * (n // 2) + ids[n // 2:]
        out.append({"input_ids": ids} if labels is None else {"input_ids": ids, "labels": labels})
    return out


def lora_plus_model(attn: str, heads: int, kv_heads: int, wrap: str = "none"):
    """The tiny Llama (tests/sft/conftest.py) with `heads`/`kv_heads` heads of 8 dims, tied embeddings, float64,
    wrapped in LoRA + trainable embeddings and norms; LoRA B drawn at random so that every factor gets a gradient."""
    from sft.model import add_lora_plus

    config = tiny_llama_config(hidden_size=8 * heads, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               tie_word_embeddings=True)
    config.s2_attn = {"group_size": GROUP, "wrap": wrap}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float64)
    model = add_lora_plus(model, r=4, alpha=8, trainable=("embed", "norm")).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def per_sample_losses(model, batch, spans):
    """Mean next-token loss of each sample span (HF convention: position t predicts label t + 1)."""
    logits = model(**batch, use_cache=False).logits[0]
    labels = batch["labels"][0]
    token_loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="none")
    counts = [int((labels[start + 1:end] != IGNORE_INDEX).sum()) for start, end in spans]
    return [token_loss[start:end - 1].sum() / n for (start, end), n in zip(spans, counts)], counts


def packed_vs_alone(model):
    """Largest differences between each sample in the packed row and the sample alone: (loss, gradient, HF loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    items = samples()
    packed = PackedCollator(pad_id=0)([pack_samples(items)])
    packed.pop(REAL_TOKENS)
    starts = [0, *torch.cumsum(torch.tensor(SAMPLE_LENGTHS), 0).tolist()]
    spans = list(zip(starts[:-1], starts[1:]))
    packed_losses, counts = per_sample_losses(model, packed, spans)
    loss_diff = grad_diff = 0.0
    alone_sums = 0.0
    for item, loss in zip(items, packed_losses):
        alone = PadCollator(pad_id=0)([item])  # the unpacked path: a row of its own with attention_mask
        (alone_loss,), (n,) = per_sample_losses(model, alone, [(0, len(item["input_ids"]))])
        alone_sums += float(alone_loss.detach()) * n
        loss_diff = max(loss_diff, abs(float((loss - alone_loss).detach())))
        g_packed = torch.autograd.grad(loss, params, retain_graph=True)
        g_alone = torch.autograd.grad(alone_loss, params)
        grad_diff = max(grad_diff, max(float((a - b).abs().max()) for a, b in zip(g_packed, g_alone)))
    # the model's own loss over the whole row: the first token of a sample is never a target
    hf_loss = model(**packed, use_cache=False).loss
    hf_diff = abs(float(hf_loss.detach()) - alone_sums / sum(counts))
    return loss_diff, grad_diff, hf_diff


@pytest.fixture
def leaky_attention():
    """Registers (under a fresh name) `attn` with the sample boundaries removed: every row is one sequence."""
    names = []

    def register(attn: str) -> str:
        def forward(module, query, key, value, attention_mask, **kwargs):
            kwargs.pop("position_ids", None)
            if attn == "s2_attn":
                return s2attn.s2_attention_forward(module, query, key, value, None, **kwargs)
            return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

        names.append(f"leaky_{uuid.uuid4().hex[:8]}")
        AttentionInterface.register(names[-1], forward)
        return names[-1]

    yield register
    for name in names:
        AttentionInterface._global_mapping.pop(name, None)


EQUALITY_CASES = {  # name: (attention, heads, kv heads, wrap)
    "s2-gqa": ("s2_attn", 4, 2, "none"),
    "s2-gqa-roll": ("s2_attn", 4, 2, "roll"),
    "s2-odd-heads": ("s2_attn", 9, 3, "none"),
    "s2-odd-heads-roll": ("s2_attn", 9, 3, "roll"),
    "s2-odd-heads-one-kv": ("s2_attn", 5, 1, "none"),  # a KV head serves shifted and unshifted query heads
    "full-gqa": ("packed_causal", 4, 2, "none"),
    "full-odd-heads": ("packed_causal", 9, 3, "none"),
}


@pytest.fixture(params=["per-sample", "gather"])
def route(request, monkeypatch):
    """How a packed row of few samples is attended: each sample's slice on its own (the default for few samples), or
    all samples' segments gathered by size class (the route of rows of many short samples)."""
    if request.param == "gather":
        monkeypatch.setattr(s2attn, "_few_samples", lambda *args: False)
    return request.param


@pytest.mark.parametrize("case", EQUALITY_CASES, ids=list(EQUALITY_CASES))
def test_packed_row_gives_each_sample_its_own_loss_and_gradients(case, route, leaky_attention, monkeypatch):
    attn, heads, kv_heads, wrap = EQUALITY_CASES[case]
    model = lora_plus_model(attn, heads, kv_heads, wrap)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names) and any("embed" in n for n in names) and any("norm" in n for n in names)

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("a tokens x tokens mask was built for a packed row")

    with monkeypatch.context() as patch:  # training never builds an N x N mask for packed rows
        patch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, "sdpa", no_dense_mask)
        loss_diff, grad_diff, hf_diff = packed_vs_alone(model)
    # (transformers computes its own loss in float32)
    assert loss_diff < 1e-10 and grad_diff < 1e-10 and hf_diff < 1e-6, (loss_diff, grad_diff, hf_diff)

    # the same comparison fails when the samples of the row can see each other
    model.get_base_model().set_attn_implementation(leaky_attention(attn))
    leak_loss, leak_grad, _ = packed_vs_alone(model)
    assert leak_loss > 1e-4 and leak_grad > 1e-4, (leak_loss, leak_grad)


def test_eval_mode_attends_inside_each_packed_sample(route):
    model = lora_plus_model("s2_attn", 4, 2).eval()
    items = samples(seed=1)
    packed = PackedCollator(pad_id=0)([pack_samples(items)])
    packed.pop(REAL_TOKENS)
    with torch.no_grad():
        logits = model(**packed, use_cache=False).logits[0]
        start = 0
        for item in items:
            n = len(item["input_ids"])
            alone = model(input_ids=torch.tensor([item["input_ids"]]), use_cache=False).logits[0]
            torch.testing.assert_close(logits[start:start + n], alone, atol=1e-10, rtol=1e-10)
            start += n


# ----------------------------------------------------------------------------------------------------------------------
# Training with packing (sft.train hooks)
# ----------------------------------------------------------------------------------------------------------------------


class BatchSpy(TrainerCallback):
    """Records the keyword arguments of every training forward and the attention implementation."""

    def __init__(self):
        self.batches, self.attn, self.group = [], None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.get_base_model()
        self.attn, self.group = base.config._attn_implementation, getattr(base.config, "s2_attn", None)
        model.register_forward_pre_hook(lambda module, a, kw: self.batches.append(dict(kw)), with_kwargs=True)


def test_sft_training_on_packed_rows_reports_its_layout(tiny_llama_dir, tmp_path, caplog, monkeypatch):
    import json
    import logging

    from sft.train import run
    from tests.sft.conftest import config, write_tokenized

    built = write_tokenized(tmp_path / "built", [20, 24, 28, 30, 36, 40, 44, 48, 52, 60, 600])
    collated = []
    collate = PackedCollator.__call__
    monkeypatch.setattr(PackedCollator, "__call__", lambda self, items: collated.append(collate(self, items))
                        or collated[-1])
    spy = BatchSpy()
    caplog.set_level(logging.INFO, logger="sft.train")
    result = run(config(tiny_llama_dir, built, tmp_path / "run", packing=True, max_length=128, max_steps=2,
                        per_device_batch_size=2, eval_samples=0), callbacks=(spy,))
    layout = json.loads((tmp_path / "run/data_stats.json").read_text())["layout"]
    assert result.data.dropped_too_long == 1  # still dropped and counted, never cut
    assert layout["layout"] == "packed" and layout["samples"] == 10 and layout["rows"] == 4
    # rows of 112, 128, 122, 20 tokens; batches of similar rows: [20, 112], [122, 128]
    assert layout["samples_per_row_max"] == 4 and layout["padding_fraction"] == pytest.approx(98 / 480, abs=1e-6)
    assert "packed 10 samples into 4 rows" in caplog.text  # the start-up line
    assert spy.attn == "s2_attn" and spy.group == {"group_size": 32, "wrap": "none"}  # G = max_length / 4
    assert "attention_mask" not in spy.batches[0] and spy.batches[0]["input_ids"].shape[0] == 2
    assert REAL_TOKENS not in spy.batches[0]  # counted by the trainer, never given to the model
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    logged = [x["padding_fraction"] for x in lines if "padding_fraction" in x]
    assert logged and all(0 < x < 1 for x in logged)  # the padding sample of the shorter row is counted
    batch = collated[0]
    assert torch.equal(batch["position_ids"], spy.batches[0]["position_ids"])
    starts = batch["position_ids"] == 0
    assert int(starts.sum()) > 2 and bool((batch["labels"][starts] == IGNORE_INDEX).all())


def test_extend_training_packs_documents_with_full_attention(tiny_llama_dir, tmp_path):
    from sft.train import run
    from tests.sft.conftest import config

    (tmp_path / "text").mkdir()
    for k, words in enumerate((10, 25, 40, 70)):
        (tmp_path / f"text/doc{k}.txt").write_text(" ".join(["long context"] * words))
    spy = BatchSpy()
    result = run(config(tiny_llama_dir, str(tmp_path / "text"), tmp_path / "run", mode="extend", packing=True,
                        s2_attn=False, max_length=96, max_steps=2, per_device_batch_size=1), callbacks=(spy,))
    assert spy.attn == "packed_causal" and result.data.documents == 4
    assert result.data.layout.samples >= 4 and result.data.layout.rows < result.data.layout.samples
    assert all(b["input_ids"].shape[1] <= 96 and "attention_mask" not in b for b in spy.batches)


def test_full_attention_over_packed_rows_is_one_varlen_call_per_head_half_with_the_sample_boundaries(monkeypatch):
    """flash-attn varlen path of ``packed_causal`` (a stand-in for flash_attn_varlen_func): cu_seqlens are the sample
    boundaries of the packed rows, and the output is each sample's causal attention."""
    import itertools
    from types import SimpleNamespace

    calls = []

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and causal
        calls.append(cu_q.tolist())
        return torch.cat([F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v)),
                                                         is_causal=True, scale=softmax_scale).transpose(0, 1)
                          for a, b in itertools.pairwise(cu_q.tolist())])

    monkeypatch.setattr(s2attn, "_flash_varlen_func", lambda: fake_varlen)
    module = torch.nn.Module()
    module.config, module.is_causal = SimpleNamespace(s2_attn={"backend": "flash"}), True
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 20, 8, generator=gen) for h in (4, 2, 2))
    position_ids = torch.tensor([list(range(7)) + list(range(13)), list(range(20))])
    out, _ = s2attn.packed_causal_forward(module.train(), q, k, v, None, position_ids=position_ids)
    assert calls == [[0, 7, 20, 40]] * 2  # row 0: samples of 7 and 13 tokens; row 1: one of 20
    for row, spans in ((0, ((0, 7), (7, 20))), (1, ((0, 20),))):
        for a, b in spans:
            alone = F.scaled_dot_product_attention(q[row:row + 1, :, a:b], k[row:row + 1, :, a:b].repeat_interleave(
                2, 1), v[row:row + 1, :, a:b].repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
            torch.testing.assert_close(out[row:row + 1, a:b], alone)


@pytest.mark.parametrize("attn", ["s2_attn", "packed_causal"])
def test_packed_rows_train_under_bf16_autocast_with_float32_weights(attn, route):
    """As sft.run trains on CPUs with bf16 units: float32 weights under bf16 autocast. The attention's output is bf16
    while the (RoPE-upcast) queries are float32; the gathered path used to fail writing one into the other. Two rows,
    the second padded (21 + 13 and 30 tokens)."""
    model = lora_plus_model(attn, 4, 2).float()
    items = samples()
    packed = PackedCollator(pad_id=0)([pack_samples(items[:2]), pack_samples(items[2:])])
    packed.pop(REAL_TOKENS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**packed, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------------
# benchmarks/packing.py: the four layouts it times train the same samples
# ----------------------------------------------------------------------------------------------------------------------


def test_packing_benchmark_layouts_train_the_same_tokens_and_only_padded_batches_pad():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/packing.py"
    spec = importlib.util.spec_from_file_location("packing_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    lengths = [30, 29, 28, 27, 60, 59, 58, 57]  # two grouped batches of 4, as the benchmark draws them
    items = [{"input_ids": list(range(1, n + 1)), "labels": [IGNORE_INDEX] * (n - 3) + [7, 8, 9]} for n in lengths]
    plans = bench.layouts(items, max_length=64, batch_size=4, seed=0, pad_id=0)
    assert list(plans) == list(bench.LAYOUTS)
    counts = {name: [sum(x) for x in zip(*(bench.batch_tokens(batch) for batch, _ in plan))]
              for name, plan in plans.items()}
    assert {name: c[:2] for name, c in counts.items()} == {name: [8 * 3, sum(lengths)] for name in plans}
    padding = {name: 1 - real / computed for name, (_, real, computed) in counts.items()}
    assert padding["grouped"] < 0.05 < padding["random"]  # the random order mixes 30- and 60-token samples
    assert padding["single"] == padding["packed"] == 0
    assert all(batch["input_ids"].shape[1] <= 64 for batch, _ in plans["packed"])
    assert len(plans["packed"]) < len(items)  # short samples share rows
