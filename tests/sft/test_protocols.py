"""The reference protocols against the reference code itself, copied verbatim from the reference repositories:
LongBench v1/v2 middle truncation (THUDM/LongBench pred.py), LongLoRA's passkey prompt (passkey_retrivial.py) and
perplexity (eval.py); plus the project's one middle-truncation rule shared by the builder and the evaluator."""
from __future__ import annotations

import numpy as np
import pytest

from longqa.truncation import middle_keep, middle_split
from sft.evaluation.passkey import answer_token_ids, longlora_filler_chars, longlora_prompt
from sft.evaluation.ppl import Window, aggregate, longlora_windows, window_nll
from sft.evaluation.qa import QAExample, longbench_v1_cut, longbench_v2_cut, render

# ----------------------------------------------------------------------------------------------------------------------
# Middle truncation
# ----------------------------------------------------------------------------------------------------------------------


def test_one_middle_rule_for_builder_and_evaluator():
    from longqa.tokenize import keep_indices

    assert middle_split(10, 5) == (3, 2) and middle_split(10, 4) == (2, 2) and middle_split(3, 5) == (3, 0)
    assert middle_keep(list(range(10)), 5) == [0, 1, 2, 8, 9] and middle_keep([1, 2], 0) == []
    for n, budget in [(10, 5), (10, 4), (7, 1), (100, 33)]:
        head, tail = keep_indices(n, budget, "middle")
        assert list(range(n))[head] + list(range(n))[tail] == middle_keep(list(range(n)), budget)


def reference_v1(tokenizer, prompt, max_length):
    """LongBench/pred.py get_pred, the truncation lines verbatim (tensors as in the original)."""
    tokenized_prompt = tokenizer(prompt, truncation=False, return_tensors="pt").input_ids[0]
    if len(tokenized_prompt) > max_length:
        half = int(max_length/2)
        prompt = tokenizer.decode(tokenized_prompt[:half], skip_special_tokens=True)+tokenizer.decode(tokenized_prompt[-half:], skip_special_tokens=True)  # noqa: E501
    return prompt


def reference_v2(tokenizer, prompt, max_len):
    """LongBench v2 pred.py query_llm, the truncation lines verbatim (a model of model_map)."""
    input_ids = tokenizer.encode(prompt)
    if len(input_ids) > max_len:
        input_ids = input_ids[:max_len//2] + input_ids[-max_len//2:]
        prompt = tokenizer.decode(input_ids, skip_special_tokens=True)
    return prompt


TEXTS = ["The Normans (Norman: Nourmands) gave their name to Normandy. " * 12,
         "Zürich, café, naïve — ünïcödé text 3.5 times. " * 9, "short", ""]


@pytest.mark.parametrize("max_length", [2, 7, 8, 31, 64, 1000])
@pytest.mark.parametrize("text", TEXTS)
def test_longbench_cuts_equal_the_reference(tiny_tokenizer, text, max_length):
    assert longbench_v1_cut(tiny_tokenizer, text, max_length) == reference_v1(tiny_tokenizer, text, max_length)
    assert longbench_v2_cut(tiny_tokenizer, text, max_length) == reference_v2(tiny_tokenizer, text, max_length)


def test_render_cuts_the_raw_user_turn_before_the_template(tiny_tokenizer):
    document = "The Normans gave their name to Normandy. " * 40
    example = QAExample("q", ["Normandy"], messages=[{"role": "user", "content": document + "Where?"}])
    full = render(example, tiny_tokenizer, 10_000)
    assert not full.truncated
    for truncation, cut in (("longbench_v1", longbench_v1_cut), ("longbench_v2", longbench_v2_cut)):
        got = render(example, tiny_tokenizer, 10_000, truncation=truncation, max_length=60)
        text = tiny_tokenizer.apply_chat_template([{"role": "user",
                                                    "content": cut(tiny_tokenizer, document + "Where?", 60)}],
                                                  tokenize=False, add_generation_prompt=True)
        assert got.ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert got.truncated and got.n_tokens == full.n_tokens
        # without max_length: the window budget minus the template's tokens; the result fits the budget
        fitted = render(example, tiny_tokenizer, 120, truncation=truncation)
        assert len(fitted.ids) <= 120 and fitted.ids[-3:] == full.ids[-3:]


# ----------------------------------------------------------------------------------------------------------------------
# LongLoRA passkey_retrivial.py
# ----------------------------------------------------------------------------------------------------------------------


def generate_prompt_landmark(n_garbage, seed):
    """passkey_retrivial.py, verbatim (`random` is numpy.random there: `from numpy import random`)."""
    from numpy import random

    rnd_state = random.get_state()
    random.seed(seed)
    n_garbage_prefix = random.randint(0, n_garbage)
    n_garbage_suffix = n_garbage - n_garbage_prefix

    task_description = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there."  # noqa: E501
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    garbage_inf = " ".join([garbage] * 5000)
    assert len(garbage_inf) >= n_garbage
    garbage_prefix = garbage_inf[:n_garbage_prefix]
    garbage_suffix = garbage_inf[:n_garbage_suffix]
    pass_key = random.randint(1, 50000)
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    final_question = "What is the pass key? The pass key is"
    lines = [
        task_description,
        garbage_prefix,
        information_line,
        garbage_suffix,
        final_question,
    ]
    random.set_state(rnd_state)
    return "\n".join(lines), str(pass_key)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("interval_point", [1, 2, 8, 32])
def test_longlora_passkey_prompt_equals_the_reference(seed, interval_point):
    n_garbage = int(3.75 * interval_point * 1000 // 1024 * 1024)  # the reference's main(), interval 1000
    assert longlora_filler_chars(interval_point * 1000) == n_garbage
    prompt, key, _ = longlora_prompt(n_garbage, seed)
    assert (prompt, str(key)) == generate_prompt_landmark(n_garbage, seed)
    assert 1 <= key <= 49999


def test_longlora_keys_cover_1_to_49999():
    keys = {longlora_prompt(1024, seed)[1] for seed in range(1000)}
    assert min(keys) >= 1 and max(keys) <= 49999 and len(keys) > 950


def test_answer_tokens_are_the_key_as_it_follows_the_prompt(tiny_tokenizer):
    prompt = "What is the pass key? The pass key is"
    ids = answer_token_ids(tiny_tokenizer, prompt, 31415)
    assert tiny_tokenizer.decode(ids).strip() == "31415"
    assert tiny_tokenizer(prompt)["input_ids"] + ids == tiny_tokenizer(prompt + " 31415")["input_ids"]


# ----------------------------------------------------------------------------------------------------------------------
# LongLoRA eval.py
# ----------------------------------------------------------------------------------------------------------------------


def reference_eval(model, data, batch_size, seq_length, sliding_window=256):
    """eval.py get_as_batch + evaluate, verbatim but for the device moves, tqdm and printing."""
    import torch

    def get_as_batch(data, seq_length, batch_size, device='cpu', sliding_window=256):
        all_ix = list(range(0, len(data) - seq_length, sliding_window))
        all_ix.pop()

        for idx in range(0, len(all_ix), batch_size):
            ix = all_ix[idx:idx+batch_size]
            assert all([idx + seq_length + 1 <= len(data) for idx in ix])
            x = torch.stack([torch.from_numpy((data[i:i+seq_length]).astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy((data[i+1:i+1+seq_length]).astype(np.int64)) for i in ix])
            yield x, y

    stats = {}
    model.eval()
    loss_list_val, acc_list = [], []
    loss_step_list_val = []
    with torch.no_grad():
        for idx, (x, y) in enumerate(get_as_batch(data['val'], seq_length, batch_size, sliding_window=sliding_window)):
            val_loss = 0.
            acc = 0.
            cnt = 0
            for part_idx, i in enumerate(range(0, x.shape[1], seq_length)):
                part_len = x[:, i:i + seq_length].shape[1]
                outputs = model(
                    input_ids=x[:, i:i + seq_length],
                    labels=x[:, i:i+seq_length].contiguous(),
                    use_cache=False)
                val_loss = outputs.loss * part_len + val_loss
                acc = ((outputs.logits.argmax(-1) == y[:, i:i+seq_length]).float().sum()) + acc
                cnt += part_len
                while len(loss_step_list_val) <= part_idx:
                    loss_step_list_val.append([])
                loss_step_list_val[part_idx].append(outputs.loss.item())
            val_loss /= cnt
            acc /= cnt
            loss_list_val.append(val_loss.item())
            acc_list.append(acc.item())
    stats['val_loss'] = torch.as_tensor(loss_list_val).mean().item()
    stats['val_perplexity'] = 2.71828 ** stats['val_loss']
    return stats


@pytest.mark.parametrize("n_tokens, length, stride, batch_size", [(400, 32, 16, 4), (300, 64, 20, 32), (130, 16, 8, 3)])
def test_longlora_perplexity_equals_eval_py(tiny_llama_dir, n_tokens, length, stride, batch_size):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokens = np.random.RandomState(0).randint(3, 400, n_tokens).astype(np.uint16)  # eval.py reads a uint16 memmap
    expected = reference_eval(model, {"val": tokens}, batch_size, length, stride)
    windows = longlora_windows(n_tokens, length, stride)
    assert all(w.n_scored == length - 1 and w.end - w.begin == length for w in windows)
    got = aggregate([window_nll(model, tokens.tolist(), w) for w in windows], "longlora", batch_size)
    assert got["nll"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert got["ppl"] == pytest.approx(expected["val_perplexity"], rel=1e-4)
    assert got["ci"][0] <= got["ppl"] * 1.001 and got["ppl"] <= got["ci"][1] * 1.001


def test_sliding_and_longlora_windows_differ_by_the_last_target():
    assert longlora_windows(1000, 256, 256) == [Window(0, 256, 1), Window(256, 512, 257)]
