"""`python -m sft.eval` end to end on two tiny models (a model folder and a LoRA+ adapter folder) and a tiny built
dataset: report.json / report.md / PNGs with both models as columns, predictions, skipped lengths, determinism;
plus the QA helpers (middle truncation, batching, prompts) and the configuration checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from schemas import BuildConfig
from schemas.eval import EvalConfig
from sft.eval import evaluate, main, resolve, ConfigError
from sft.evaluation.generate import GenerationStats, greedy_generate, make_batches, pack_rows, prefix_groups
from sft.evaluation.qa import load_examples, middle_truncate, render
from tests.longqa.fixtures import longbench_row, write_longbench
from tests.sft.conftest import make_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 1024  # the tiny models' max_position_embeddings


# ----------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_middle_truncate_keeps_both_ends():
    assert middle_truncate(list(range(10)), 5) == [0, 1, 2, 8, 9]  # the project's rule: the head gets the odd one
    assert middle_truncate(list(range(10)), 4) == [0, 1, 8, 9]
    assert middle_truncate([1, 2, 3], 3) == [1, 2, 3]
    with pytest.raises(ValueError):
        middle_truncate([1, 2, 3], 1)


def test_make_batches_groups_close_lengths():
    lengths = [10, 100, 12, 95, 50, 11]
    assert make_batches(lengths, batch_size=2, max_batch_tokens=1000) == [[0, 5], [2], [4], [3, 1]]
    assert make_batches(lengths, batch_size=8, max_batch_tokens=1000, max_pad_fraction=1.0) == [[0, 5, 2, 4, 3, 1]]
    assert make_batches(lengths, batch_size=8, max_batch_tokens=150, max_pad_fraction=1.0) == \
        [[0, 5, 2], [4], [3], [1]]  # 4 x 50 > 150 and 2 x 95 > 150 tokens
    assert sorted(i for b in make_batches(lengths, batch_size=3, max_batch_tokens=64) for i in b) == list(range(6))


def test_prefix_groups_put_prompts_with_a_long_common_start_together():
    doc_a, doc_b = list(range(100, 110)), list(range(200, 210))
    odd = doc_a[:6] + [9]  # starts like doc_a for 6 tokens
    prompts = [doc_b + [1], doc_a + [5, 6], [7, 8, 9], doc_a + [4], doc_b + [2, 3], odd, doc_a + [3]]
    # doc_a's three questions share 10 tokens (saving 2 x 10); with the odd prompt they would share 6 (3 x 6)
    assert prefix_groups(prompts, min_tokens=4) == [(10, [6, 3, 1]), (10, [0, 4]), (0, [2, 5])]
    # with two doc_a questions, sharing 6 among three saves more (2 x 6) than 10 between two (1 x 10)
    assert prefix_groups([doc_a + [4], odd, doc_a + [5]], min_tokens=4) == [(6, [1, 0, 2])]
    assert prefix_groups(prompts, min_tokens=11) == [(0, [0, 1, 2, 3, 4, 5, 6])]
    assert prefix_groups(prompts, min_tokens=0) == [(0, [0, 1, 2, 3, 4, 5, 6])]
    # runs of at most max_members
    assert prefix_groups([doc_a + [k] for k in range(5)], min_tokens=4, max_members=2) == \
        [(10, [0, 1]), (10, [2, 3]), (0, [4])]
    # every member keeps one token to compute, also a prompt that is all prefix (a duplicate)
    assert prefix_groups([doc_a, doc_a + [1], doc_a], min_tokens=4) == [(9, [0, 2, 1])]
    assert prefix_groups([], min_tokens=4) == []


def test_pack_rows_puts_padding_between_prefix_and_rest():
    input_ids, mask = pack_rows([5, 6], [[7], [8, 9, 10]], pad=0)
    assert input_ids.tolist() == [[5, 6, 0, 0, 7], [5, 6, 8, 9, 10]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    input_ids, mask = pack_rows([], [[7], [8, 9]], pad=0)  # no prefix: plain left padding
    assert input_ids.tolist() == [[0, 7], [8, 9]] and mask.tolist() == [[0, 1], [1, 1]]


def _one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    """Reference: one unpadded `generate` per prompt, no shared cache."""
    import torch

    answers = []
    for ids in prompts:
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=[2])
        new = out[0, len(ids):].tolist()
        answers.append(tokenizer.decode(new[:new.index(2) + 1] if 2 in new else new, skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize("batch_size", [1, 6])
def test_shared_prefix_generation_gives_the_answers_of_one_prompt_at_a_time(tmp_path, batch_size):
    """Two 'documents' with six questions each (1-16 tokens): the prefix is computed once per document, and batching
    pads the questions between document and question (masked). A row that attends to its padding, numbers its
    positions through the padding, or misses its copy of the cache gets other answers here (each checked by hand)."""
    import torch

    from sft.eval import load_for_eval

    model, tokenizer, _ = load_for_eval(make_tiny_llama(tmp_path, max_position_embeddings=512), dtype="float32",
                                        device="cpu")
    generator = torch.Generator().manual_seed(1)
    prompts = []
    for n in (40, 70):
        document = torch.randint(3, 400, (n,), generator=generator).tolist()
        prompts += [document + torch.randint(3, 400, (1 + 3 * q,), generator=generator).tolist() for q in range(6)]
    expected = _one_at_a_time(model, tokenizer, prompts, 8)
    assert len(set(expected)) >= 9  # most prompts get answers of their own: a mix-up would show
    stats = GenerationStats()
    answers = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=batch_size,
                              max_batch_tokens=1 << 20, max_pad_fraction=1.0, min_shared_prefix=16, stats=stats)
    assert answers == expected
    assert stats.prompt_tokens == sum(map(len, prompts))
    assert stats.prefill_tokens == 40 + 70 + 2 * sum(1 + 3 * q for q in range(6))
    assert stats.batches == (12 if batch_size == 1 else 2)


def test_the_continuation_cache_appends_in_place_and_equals_the_prefix_cache(tmp_path):
    """Decoding from a shared prefix writes each token into a preallocated buffer (transformers' DynamicLayer copies
    the whole cache per token); keys and values, their growth past the capacity and row repeats equal a deep copy."""
    import copy

    import torch

    from sft.eval import load_for_eval
    from sft.evaluation.generate import continuation_cache, prefill

    model, _, _ = load_for_eval(make_tiny_llama(tmp_path, max_position_embeddings=512), dtype="float32", device="cpu")
    prefix = prefill(model, list(range(3, 43)))
    cache, reference = continuation_cache(prefix, 44), copy.deepcopy(prefix)
    buffer = cache.layers[0]._k.data_ptr()
    with torch.inference_mode():
        for token in range(50, 58):  # 8 tokens: past the capacity of 44 after the fourth
            for c in (cache, reference):
                model(input_ids=torch.tensor([[token]]), past_key_values=c, use_cache=True)
            if token < 54:
                assert cache.layers[0]._k.data_ptr() == buffer  # written in place, not copied
    assert cache.get_seq_length() == reference.get_seq_length() == 48
    for ours, theirs in zip(cache.layers, reference.layers):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert prefix.get_seq_length() == 40  # the prefix itself is untouched, for the next prompt
    cache.batch_repeat_interleave(3)
    reference.batch_repeat_interleave(3)
    assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
               for a, b in zip(cache.layers, reference.layers))


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: two tiny models and a tiny built dataset
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{'base': a tiny Llama folder, 'tuned': a LoRA+ adapter folder on it with non-zero LoRA factors}."""
    import torch

    from sft.merge import save_adapter
    from sft.model import add_lora_plus, load_model

    root = tmp_path_factory.mktemp("eval-models")
    base = make_tiny_llama(root / "base", max_position_embeddings=WINDOW, tie_word_embeddings=True)
    model, tokenizer = load_model(base)
    peft_model = add_lora_plus(model, r=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5 * torch.randn_like(param))
    adapter = save_adapter(peft_model, tokenizer, root / "adapter")
    return {"base": base, "tuned": str(adapter)}


def _document(i: int) -> str:
    return f"Document {i}. " + " ".join(f"The Normans lived in region {i}-{k}." for k in range(4 + 30 * (i % 5)))


@pytest.fixture(scope="module")
def tiny_built(tmp_path_factory, tiny_models):
    """A built dataset of 12 documents (2 questions each) of 60 to ~1400 tokens; half of them held out."""
    from longqa.pipeline import build

    root = tmp_path_factory.mktemp("eval-data")
    rows = [longbench_row(_document(d), f"Where did the Normans live, {q}?", [f"region {d}-{q}", f"{d}-{q}"],
                          _id=f"d{d:02d}q{q}") for d in range(12) for q in range(2)]
    source = write_longbench(root / "lb.jsonl", rows)
    cfg = BuildConfig(inputs=[{"path": str(source), "format": "longbench"}], tokenizer=tiny_models["base"],
                      out=str(root / "out"), max_length=4096, heldout_fraction=0.5)
    build(cfg, progress=False)
    return {"folder": cfg.out, "jsonl": str(source)}


def _config(tiny_models, tiny_built, out: Path, **overrides) -> EvalConfig:
    data = dict(models=tiny_models, tasks=["qa", "passkey", "ppl"], out=str(out), threads=1,
                qa=dict(data=tiny_built["folder"], limit=8, max_new_tokens=8, batch_size=3, length_buckets=[256, 512]),
                passkey=dict(lengths=[256, 512, 2048], depths=[0.0, 0.5, 1.0], trials=1, max_new_tokens=6),
                ppl=dict(data=tiny_built["folder"], lengths=[64, 256, 2048], stride=64, max_windows=2))
    return EvalConfig.model_validate({**data, **overrides})


def _scores(report: dict) -> dict:
    """The results without timing (which differs between runs)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("timing", "predictions")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(report["results"])


# ----------------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------------


def test_qa_prompts_are_the_chat_messages_without_the_answer(tiny_models, tiny_built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    examples = load_examples(tiny_built["folder"], split="test")
    assert examples and [e.id for e in examples] == sorted(e.id for e in examples)
    assert load_examples(tiny_built["folder"], limit=3) == examples[:3]
    prompt = render(examples[0], tokenizer, budget=100_000)
    text = tokenizer.decode(prompt.ids)
    assert text.endswith("<|im_start|>assistant\n") and examples[0].question in text
    assert examples[0].answers[0] not in text.split("<|im_start|>user")[1].split(examples[0].question)[1]
    cut = render(examples[0], tokenizer, budget=40)
    assert len(cut.ids) == 40 and cut.truncated and cut.ids == middle_truncate(prompt.ids, 40)


def test_longbench_jsonl_prompts_use_the_template(tiny_built):
    examples = load_examples(tiny_built["jsonl"], prompt_template="C: {context}\nQ: {input}\nA:", chat=False, limit=2)
    assert [e.id for e in examples] == ["d00q0", "d00q1"]
    assert examples[0].prompt == f"C: {_document(0)}\nQ: Where did the Normans live, 0?\nA:"
    assert examples[0].answers == ["region 0-0", "0-0"]


def test_eval_two_models_writes_the_report_and_is_deterministic(tmp_path, tiny_models, tiny_built):
    messages: list[str] = []
    report = evaluate(_config(tiny_models, tiny_built, tmp_path / "a"), progress=False, say=messages.append)
    out = tmp_path / "a"
    on_disk = json.loads((out / "report.json").read_text())
    assert list(on_disk["models"]) == ["base", "tuned"]
    assert on_disk["models"]["tuned"]["kind"] == "adapter, merged in memory"
    assert all(m["window"] == WINDOW for m in on_disk["models"].values())

    qa = on_disk["results"]["qa"]
    for name in ("base", "tuned"):
        assert qa[name]["overall"]["n"] == 8
        assert sum(b["n"] for b in qa[name]["buckets"].values()) == 8
        assert 0 <= qa[name]["overall"]["f1"] <= 100
        assert qa[name]["truncated"] >= 1  # the longest held-out prompts exceed 1024 - 8 tokens
        lines = (out / f"predictions-{name}.jsonl").read_text().splitlines()
        assert len(lines) == 8 and {"id", "prediction", "answers", "f1", "truncated"} <= set(json.loads(lines[0]))
        assert qa[name]["timing"]["new_tokens"] > 0
        # two questions per document: the longer documents are prefilled once for both
        assert 0 < qa[name]["timing"]["prefill_tokens"] < qa[name]["timing"]["prompt_tokens"]
    assert qa["base"]["overall"] != qa["tuned"]["overall"] or \
        (out / "predictions-base.jsonl").read_text() != (out / "predictions-tuned.jsonl").read_text()

    passkey = on_disk["results"]["passkey"]["base"]
    assert passkey["skipped_lengths"] == [2048] and set(passkey["grid"]) == {"256", "512"}
    assert len(passkey["trials"]) == 6 and all(t["tokens"] <= t["length"] for t in passkey["trials"])
    assert any("2048" in m and "skipped" in m for m in messages)

    ppl = on_disk["results"]["ppl"]["base"]
    assert set(ppl["by_length"]) == {"64", "256"} and "2048" in ppl["skipped"]
    assert ppl["by_length"]["64"]["tokens"] == 2 * 64 and ppl["by_length"]["256"]["windows"] == 2
    assert all(v["ppl"] > 1 for v in ppl["by_length"].values())
    # the per-window scores the perplexity is made of (for paired comparisons between models)
    for v in ppl["by_length"].values():
        assert len(v["per_window"]) == v["windows"] and sum(n for _, n in v["per_window"]) == v["tokens"]
        assert math.exp(sum(s for s, _ in v["per_window"]) / v["tokens"]) == pytest.approx(v["ppl"], rel=1e-4)

    # what the numbers were computed on: versions, the models' files (the adapter's base is the base), data
    import hashlib

    import torch

    assert on_disk["environment"]["versions"]["torch"] == torch.__version__
    models = on_disk["models"]
    assert len(models["base"]["sha256"]) == 64 and models["tuned"]["sha256"] != models["base"]["sha256"]
    assert models["tuned"]["base_sha256"] == models["base"]["sha256"]
    manifest = json.loads((Path(tiny_built["folder"]) / "manifest.json").read_text())
    qa_data = on_disk["data"]["qa"]
    assert qa_data["fingerprint"] == manifest["fingerprints"]["text"]["test"] and qa_data["questions"] == 8
    ids = [json.loads(line)["id"] for line in (out / "predictions-base.jsonl").read_text().splitlines()]
    assert qa_data["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert on_disk["data"]["ppl"]["documents"] >= 1

    md = (out / "report.md").read_text()
    assert "## Reproduce" in md and models["base"]["sha256"] in md and qa_data["fingerprint"] in md
    assert "| metric | base | tuned |" in md and "| length x depth | base | tuned |" in md
    assert "| context (tokens) | base | tuned |" in md and "![passkey](passkey.png)" in md
    assert "| qa: prompt tokens computed / all (shared prefixes once) |" in md
    for png in ("qa.png", "passkey.png", "ppl.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert any(m.startswith("report: ") for m in messages)

    # tuned against base on the same questions: the paired F1 difference is the difference of the means
    paired = on_disk["paired"]["qa"]["tuned"]
    assert paired["n"] == 8 and paired["higher"] + paired["lower"] + paired["same"] == 8
    assert paired["difference"] == pytest.approx(qa["tuned"]["overall"]["f1"] - qa["base"]["overall"]["f1"], abs=0.02)
    assert paired["ci"][0] <= paired["difference"] <= paired["ci"][1]
    assert "qa F1, tuned − base, paired over the same 8 questions" in md
    assert any(m.startswith("qa F1 tuned − base: ") and "paired over 8 questions" in m for m in messages)

    again = evaluate(_config(tiny_models, tiny_built, tmp_path / "b"), progress=False, say=lambda m: None)
    assert _scores(again) == _scores(report)
    assert again["models"]["tuned"]["sha256"] == report["models"]["tuned"]["sha256"]


def test_cli_runs_a_yaml_config_with_flag_overrides(tmp_path, tiny_models, tiny_built, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": "passkey", "passkey": {"lengths": [256], "depths": [0.5],
                                                                      "trials": 1, "max_new_tokens": 4}}))
    rc = main(["--config", str(config), "--models", f"only={tiny_models['base']}", "--out", str(tmp_path / "r"),
               "--no-progress", "--threads", "1", "--batch-size", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(report["models"]) == ["only"] and list(report["results"]) == ["passkey"]
    assert report["config"]["qa"]["batch_size"] == 2
    assert "report: " in capsys.readouterr().out


def test_all_config_problems_are_reported_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ppl data `out` must not exist
    (tmp_path / "b").mkdir()  # a folder that is not a model
    rc = main(["--models", "a=missing-model", f"b={tmp_path / 'b'}", "--tasks", "qa,ppl,nope", "--limit", "0",
               "--qa-data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "6 problem(s)" in err
    for text in ("tasks.2", "qa.limit", "models.a: missing-model does not exist", "models.b:", "qa.data:",
                 "ppl.data: out does not exist"):
        assert text in err
    with pytest.raises(ConfigError, match="models: at least one model"):
        resolve({"models": {}}, {}, check_paths=False)


def test_default_yaml_matches_the_embedded_default():
    path = ROOT / "configs" / "eval" / "default.yaml"
    assert EvalConfig.model_validate(yaml.safe_load(path.read_text())) == EvalConfig()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate_and_name_their_command(path):
    assert path.read_text().startswith("# python -m sft.eval --config configs/eval/" + path.name)
    EvalConfig.model_validate(yaml.safe_load(path.read_text()))


@pytest.mark.slow
def test_real_smollm2_on_the_default_build(tmp_path, default_build):
    """The default base model on three held-out questions (one article: its prompt prefix is computed once) and one
    passkey prompt of the default build."""
    cfg = EvalConfig(models={"base": EvalConfig().models["base"]}, tasks=["qa", "passkey"], out=str(tmp_path),
                     qa={"data": str(default_build[0]), "limit": 3},
                     passkey={"lengths": [1024], "depths": [0.5], "trials": 1})
    report = evaluate(cfg, progress=False, say=lambda m: None)
    assert report["models"]["base"]["window"] == 8192
    qa = report["results"]["qa"]["base"]
    assert qa["overall"]["n"] == 3
    assert qa["timing"]["prefill_tokens"] < qa["timing"]["prompt_tokens"] / 2  # ~6k shared, ~30 tokens each
    assert report["results"]["passkey"]["base"]["trials"][0]["tokens"] <= 1024


def test_plain_peft_adapter_folder_loads_on_its_base(tmp_path, tiny_llama_dir):
    """An adapter folder saved by peft alone (no model_config/) is loaded on the base its config names."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sft.eval import load_for_eval
    from sft.model import load_model

    base, tokenizer = load_model(tiny_llama_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    tokenizer.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model, _, kind = load_for_eval(str(tmp_path / "adapter"))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert kind == "adapter, merged in memory" and not model.training
    assert torch.allclose(got, expected, atol=1e-5)


def test_reference_protocols_run_end_to_end(tmp_path, tiny_models, tiny_built):
    """passkey and ppl by LongLoRA's scripts and QA cut as LongBench v1, one model: results name their protocol and
    carry n and intervals; report.md shows them."""
    cfg = _config({"base": tiny_models["base"]}, tiny_built, tmp_path,
                  passkey=dict(protocol="longlora", lengths=[300, 40000], trials=3),
                  ppl=dict(data=tiny_built["folder"], lengths=[64], stride=32, max_windows=5, protocol="longlora",
                           longlora_batch_size=2),
                  qa=dict(data=tiny_built["folder"], limit=4, max_new_tokens=4, truncation="longbench_v1",
                          max_length=200))
    report = evaluate(cfg, progress=False, say=lambda m: None)
    passkey = report["results"]["passkey"]["base"]
    assert passkey["protocol"] == "longlora" and passkey["skipped_lengths"] == [40000]
    row = passkey["by_length"]["300"]
    assert row["n"] == 3 and row["filler_chars"] == 1024 and 0 < row["mean_tokens"] <= WINDOW
    assert len(row["ci"]) == 2 and [t["seed"] for t in passkey["trials"]] == [0, 1, 2]
    ppl = report["results"]["ppl"]["base"]["by_length"]["64"]
    assert ppl["tokens"] == 5 * 63 and ppl["ci"][0] <= ppl["ppl"] <= ppl["ci"][1]
    qa = report["results"]["qa"]["base"]
    assert qa["truncation"] == "longbench_v1" and qa["truncated"] >= 1 and set(qa["overall"]["ci"]) >= {"f1", "rouge_l"}
    md = (tmp_path / "report.md").read_text()
    assert "protocol: longlora" in md and "(longlora windows)" in md and "middle truncation: longbench_v1" in md


def test_in_training_eval_scores_every_task_on_a_built_dataset(tiny_models, tiny_built):
    """The eval_every callback's scores (passkey, ppl, qa) on the tiny built dataset, model back in train mode."""
    from schemas.train import TrainConfig
    from sft.eval import load_for_eval
    from sft.evaluation.in_training import LongContextEval

    model, tokenizer, _ = load_for_eval(tiny_models["base"])
    cfg = TrainConfig(model=tiny_models["base"], data=tiny_built["folder"], max_length=1024, eval_every=1,
                      eval_tasks="passkey,ppl,qa", eval_passkey_lengths=[256], eval_ppl_lengths=[128],
                      eval_qa_questions=2)
    scores = LongContextEval(cfg, trainer=None).scores(model, tokenizer)
    assert set(scores) == {"longctx_passkey_256", "longctx_ppl_128", "longctx_qa_f1", "longctx_seconds"}
    assert scores["longctx_ppl_128"] > 1 and 0 <= scores["longctx_qa_f1"] <= 100


def test_passkey_likelihood_benchmark_scores_each_key_from_the_prompts_cache(tiny_llama_dir):
    """benchmarks/passkey_likelihood.py: every candidate's score equals a full forward of prompt + key (the cache is
    cut back to the prompt after each), and the distractors are other keys of as many digits."""
    import importlib.util
    import random
    from pathlib import Path

    import torch

    from sft.eval import load_for_eval

    path = Path(__file__).resolve().parents[2] / "benchmarks/passkey_likelihood.py"
    spec = importlib.util.spec_from_file_location("passkey_likelihood", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    keys = bench.candidates(40213, 9, random.Random(0))
    assert keys[0] == 40213 and len(set(keys)) == 10 and all(len(str(k)) == 5 for k in keys)
    model, tokenizer, _ = load_for_eval(str(tiny_llama_dir))
    prompt = "The pass key is 40213. Remember it. What is the pass key? The pass key is"
    scores = bench.score_trial(model, tokenizer, prompt, [40213, 777, 40213])
    assert scores[0] == pytest.approx(scores[2], abs=1e-4) and scores[0] != pytest.approx(scores[1], abs=1e-4)
    for key, score in zip([40213, 777], scores):
        ids = tokenizer(prompt + f" {key}")["input_ids"]
        n = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        assert score == pytest.approx(float(sum(logp[i - 1, ids[i]] for i in range(n, len(ids)))), abs=1e-3)
