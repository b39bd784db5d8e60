"""sft.loss: chunked cross-entropy equals the plain path (loss and every trainable gradient), samples, reductions."""
from __future__ import annotations

import pytest
import torch

from sft.loss import (IGNORE_INDEX, count_items, logits_loss_parts, loss_parts, output_head, reduce_loss,
                      sample_ids, shift_labels_of)


def lora_plus(path: str, dtype: torch.dtype, trainable=("embed", "norm")):
    """The tiny Llama wrapped as training wraps it, LoRA B drawn non-zero so that every factor gets a gradient."""
    from sft.model import add_lora_plus, load_model

    model, _ = load_model(path, dtype=dtype)
    torch.manual_seed(1)
    peft = add_lora_plus(model, trainable=trainable)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return peft


def packed_batch(seed: int = 0):
    """Two rows of 40 tokens: row 0 packs 3 samples (positions restart at 0), row 1 is one sample with right
    padding. Labels: some positions supervised, the first token of every sample -100 (the batch contract)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 400, (2, 40), generator=g)
    position_ids = torch.cat([torch.cat([torch.arange(12), torch.arange(20), torch.arange(8)]).unsqueeze(0),
                              torch.arange(40).unsqueeze(0)])
    labels = input_ids.clone()
    labels[torch.rand(2, 40, generator=g) < 0.3] = IGNORE_INDEX
    labels[position_ids == 0] = IGNORE_INDEX
    labels[1, 33:] = IGNORE_INDEX  # padding
    return input_ids, labels, position_ids


def forward_hidden(model, input_ids, position_ids):
    out = model(input_ids=input_ids, position_ids=position_ids, output_hidden_states=True,
                logits_to_keep=torch.empty(0, dtype=torch.long))
    assert out.logits.shape[1] == 0  # no logits were computed
    return out.hidden_states[-1]


def plain_loss(model, input_ids, labels, position_ids) -> torch.Tensor:
    """The reference: the model computes all logits, one cross-entropy over them in the logits' dtype (transformers'
    own loss casts to float32 even for a float64 model, so it is no float64 reference)."""
    logits = model(input_ids=input_ids, position_ids=position_ids).logits
    targets = shift_labels_of(labels)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def test_sample_ids_start_at_position_zero_and_at_every_row():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 0, 1, 2, 3]])  # row 1 starts inside a sample (a cp slice)
    assert sample_ids(position_ids, (2, 6)).tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 4, 4, 4, 4]]
    assert sample_ids(None, (2, 3)).tolist() == [[0, 0, 0], [1, 1, 1]]


@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_chunked_loss_and_gradients_equal_the_plain_path_float64_tied(tiny_llama_dir, chunk_size):
    model = lora_plus(tiny_llama_dir, torch.float64)
    input_ids, labels, position_ids = packed_batch()

    plain = plain_loss(model, input_ids, labels, position_ids)
    plain.backward()
    expected = grads(model)

    parts = loss_parts(forward_hidden(model, input_ids, position_ids), output_head(model), labels=labels,
                       position_ids=position_ids, chunk_size=chunk_size)
    loss = reduce_loss(parts, "token")
    loss.backward()
    actual = grads(model)

    assert loss.dtype == torch.float64 and torch.allclose(loss, plain, atol=1e-6, rtol=0)
    assert actual.keys() == expected.keys()
    assert any("embed_tokens.token_adapter.trainable_tokens_delta" in n for n in actual)
    assert not any("lm_head" in n for n in actual)  # tied: the head's weight is the embedding's, one tensor
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-6, rtol=0), name
    assert sum(g.abs().sum() for g in actual.values()) > 0


def test_chunked_loss_trains_an_untied_head_and_lora_on_it(tiny_llama_untied_dir):
    from peft import LoraConfig, get_peft_model

    from sft.model import load_model

    base, _ = load_model(tiny_llama_untied_dir, dtype=torch.float64)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False,
                                            modules_to_save=["embed_tokens"]))
    input_ids, labels, position_ids = packed_batch(1)
    plain_loss(model, input_ids, labels, position_ids).backward()
    expected = grads(model)
    reduce_loss(loss_parts(forward_hidden(model, input_ids, position_ids), output_head(model), labels=labels,
                           position_ids=position_ids, chunk_size=5), "token").backward()
    actual = grads(model)
    assert any("lm_head.lora_A" in n for n in actual)
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-6, rtol=0), name


def test_chunked_loss_equals_the_plain_path_under_bf16_autocast(tiny_llama_dir):
    model = lora_plus(tiny_llama_dir, torch.float32)
    input_ids, labels, position_ids = packed_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # transformers' own loss: bf16 logits cast to float32
        plain = model(input_ids=input_ids, position_ids=position_ids, labels=labels).loss
    plain.backward()
    expected = grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = forward_hidden(model, input_ids, position_ids)
        loss = reduce_loss(loss_parts(hidden, output_head(model), labels=labels, position_ids=position_ids,
                                      chunk_size=6), "token")
    loss.backward()
    actual = grads(model)
    assert loss.dtype == torch.float32 and abs(loss.item() - plain.item()) < 1e-3
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-3, rtol=0), name


def test_sums_counts_and_both_reductions():
    torch.manual_seed(0)
    logits = torch.randn(2, 40, 400, dtype=torch.float64)
    _, labels, position_ids = packed_batch()
    parts = logits_loss_parts(logits, labels=labels, position_ids=position_ids)
    targets = shift_labels_of(labels)
    token_loss = torch.nn.functional.cross_entropy(logits.view(-1, 400), targets.view(-1), reduction="none").view(2, 40)

    ids = sample_ids(position_ids, (2, 40))
    assert parts.sums.shape == parts.counts.shape == (4,)
    for s in range(4):
        mine = (ids == s) & (targets != IGNORE_INDEX)
        assert parts.counts[s] == mine.sum() and torch.allclose(parts.sums[s], token_loss[mine].sum())
    assert parts.tokens == (targets != IGNORE_INDEX).sum() == count_items(labels, position_ids, "token")
    assert parts.samples == 4 == count_items(labels, position_ids, "sample")

    valid = targets != IGNORE_INDEX
    assert torch.allclose(reduce_loss(parts, "token"), token_loss[valid].mean())
    means = torch.stack([token_loss[(ids == s) & valid].mean() for s in range(4)])
    assert torch.allclose(reduce_loss(parts, "sample"), means.mean())
    # the share of a global batch: the same micro-batch counted within 3x as many items weighs a third
    assert torch.allclose(reduce_loss(parts, "sample", num_items=12), means.sum() / 12)
    # pre-shifted targets (context parallelism) give the same parts
    again = logits_loss_parts(logits, shift_labels=targets, position_ids=position_ids)
    assert torch.equal(again.counts, parts.counts) and torch.allclose(again.sums, parts.sums)


def test_a_sample_without_supervised_tokens_does_not_count():
    logits = torch.randn(1, 6, 10)
    labels = torch.tensor([[-100, 4, -100, -100, -100, 7]])
    position_ids = torch.tensor([[0, 1, 0, 1, 0, 1]])  # 3 samples, the middle one has no target
    parts = logits_loss_parts(logits, labels=labels, position_ids=position_ids)
    assert parts.counts.tolist() == [1, 0, 1] and parts.samples == 2
    assert torch.isfinite(reduce_loss(parts, "sample"))
    with pytest.raises(ValueError, match="exactly one of labels and shift_labels"):
        logits_loss_parts(logits)
