"""sft.tree: prefix-tree rows. Finding the prefix, the limits, and the proof by equality — a tree row gives the loss and
every trainable parameter's gradient that its samples have alone (float64, S2-Attn and full attention, GQA, several
trees in a row mixed with ordinary samples, token and sample reduction, chunked loss, gradient accumulation and
checkpointing), and a model whose branches see each other fails the same test."""
from __future__ import annotations

import pytest
import torch

from schemas.errors import DataError
from sft import s2attn
from sft.data import IGNORE_INDEX, PadCollator
from sft.loss import count_items, loss_parts, output_head, reduce_loss
from sft.packing import REAL_TOKENS, PackedCollator
from sft.tree import Tree, common_prefix, plan_trees, tree_layout, tree_prefix, tree_row
from tests.sft.test_packing import lora_plus_model, one_thread  # noqa: F401  (one_thread: autouse fixture)

# ----------------------------------------------------------------------------------------------------------------------
# Finding the prefix and the limits
# ----------------------------------------------------------------------------------------------------------------------


def qa(doc: list[int], question: list[int], answer: list[int]) -> dict:
    """A tokenized sample: the document and the question are prompt (-100), the answer is supervised."""
    ids = doc + question + answer
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * (len(doc) + len(question)) + answer}


def test_the_prefix_is_the_common_one_shortened_to_before_the_first_target():
    doc = list(range(10, 30))
    a, b = qa(doc, [5, 6], [7, 8]), qa(doc, [5, 9], [4])
    assert common_prefix([a["input_ids"], b["input_ids"]]) == 21  # the document and the question's first token
    assert tree_prefix([a["input_ids"], b["input_ids"]], [a["labels"], b["labels"]]) == 21
    # a sample supervised inside the shared part: the prefix ends before its first target's predicting token
    c = {"input_ids": a["input_ids"], "labels": [IGNORE_INDEX] * 12 + a["input_ids"][12:]}
    assert tree_prefix([a["input_ids"], c["input_ids"]], [a["labels"], c["labels"]]) == 11
    # a sample that is a prefix of another keeps at least one token of its own
    d = {"input_ids": doc[:8], "labels": [IGNORE_INDEX] * 8}
    assert tree_prefix([a["input_ids"], d["input_ids"]], [a["labels"], d["labels"]]) == 7


def test_row_of_a_tree_continues_the_prefix_positions_and_never_targets_a_branch_start():
    doc = [11, 12, 13, 14]
    items = [qa(doc, [5], [7, 8]), qa(doc, [6, 6], [9]), {"input_ids": [3, 4, 5], "labels": [-100, 4, 5]}]
    row = tree_row(items, [(2, 4), (1, 0)])
    assert row["input_ids"] == [11, 12, 13, 14, 5, 7, 8, 6, 6, 9, 3, 4, 5]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 0, 1, 2]
    assert row["labels"] == [-100, -100, -100, -100, -100, 7, 8, -100, -100, 9, -100, 4, 5]
    assert row["samples"] == 3 and row["length"] == 13


def corpus(questions: dict[str, int], doc_length: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for doc_id, count in questions.items():
        doc = torch.randint(3, 400, (doc_length,), generator=gen).tolist()
        for _ in range(count):
            q = torch.randint(3, 400, (int(torch.randint(2, 5, (1,), generator=gen)),), generator=gen).tolist()
            a = torch.randint(3, 400, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen).tolist()
            rows.append({**qa(doc, q, a), "doc_id": doc_id})
    return rows


def test_limits_make_several_trees_each_with_the_prefix_again_and_short_prefixes_stay_separate():
    rows = corpus({"a": 7, "b": 1, "c": 2}, doc_length=30)
    ids, labels, docs = ([r[k] for r in rows] for k in ("input_ids", "labels", "doc_id"))
    lengths = [len(x) for x in ids]

    def prefix_of(members):
        return tree_prefix([ids[i] for i in members], [labels[i] for i in members])

    units = plan_trees(docs, lengths, prefix_of, max_length=64, max_branches=3, min_prefix=16, seed=0)
    assert sorted(i for u in units for i in u.samples) == list(range(10))  # every sample exactly once
    trees = [u for u in units if len(u.samples) > 1]
    assert all(len(u.samples) <= 3 and u.length <= 64 for u in units)
    assert sorted(len(u.samples) for u in units if docs[u.samples[0]] == "a") == [1, 3, 3]  # 3 + 3 + 1 alone
    for u in trees:  # prefix = the document (and maybe a question's first tokens); length = prefix + branches
        assert u.prefix >= 30 and u.length == u.prefix + sum(len(ids[i]) - u.prefix for i in u.samples)
    assert plan_trees(docs, lengths, prefix_of, max_length=64, max_branches=3, min_prefix=16, seed=0) == units
    assert plan_trees(docs, lengths, prefix_of, max_length=64, max_branches=3, min_prefix=16, seed=1) != units
    separate = plan_trees(docs, lengths, prefix_of, max_length=64, max_branches=3, min_prefix=31 + 5, seed=0)
    assert all(u == Tree((u.samples[0],), 0, len(ids[u.samples[0]])) for u in separate)


def test_layout_reports_trees_branches_and_the_saving():
    import datasets

    rows = corpus({"a": 6, "b": 1, "c": 3}, doc_length=40)
    data = datasets.Dataset.from_list(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    dataset, stats = tree_layout(data, lengths, max_length=128, batch_size=1, seed=0, max_branches=4, min_prefix=16)
    assert stats.layout == "tree" and stats.samples == 10 and stats.trees == 3  # a: 4 + 2, c: 3; b alone
    assert stats.samples_in_trees == 9 and stats.branches_per_tree_max == 4 and stats.prefix_repeats == 1
    assert stats.tokens == sum(len(dataset[r]["input_ids"]) for r in range(len(dataset)))
    assert stats.tokens_alone == sum(lengths) and stats.saving > 2.0
    assert stats.supervised_tokens == sum(sum(x != IGNORE_INDEX for x in r["labels"]) for r in rows)
    assert "3 trees" in stats.summary()
    with pytest.raises(DataError, match="doc_id"):
        tree_layout(data.remove_columns("doc_id"), lengths, max_length=128, batch_size=1, seed=0, max_branches=4,
                    min_prefix=16)


# ----------------------------------------------------------------------------------------------------------------------
# The proof by equality
# ----------------------------------------------------------------------------------------------------------------------

#: two documents of 19 and 13 tokens with 3 and 2 questions, and one ordinary sample: with S2 groups of 8 tokens the
#: branches start inside segments that began in the prefix, for the shifted heads and the unshifted ones
DOCS = {"a": 3, "b": 2}


def equality_items():
    gen = torch.Generator().manual_seed(3)
    items = []
    for doc_length, count in ((19, 3), (13, 2)):
        doc = torch.randint(3, 400, (doc_length,), generator=gen).tolist()
        for k in range(count):
            q = torch.randint(3, 400, (2 + k,), generator=gen).tolist()
            a = torch.randint(3, 400, (3 - k % 2,), generator=gen).tolist()
            items.append(qa(doc, q, a))
    ids = torch.randint(3, 400, (11,), generator=gen).tolist()
    items.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 6 + ids[6:]})
    return items  # a: 0, 1, 2; b: 3, 4; ordinary: 5


def batches_of(layout: str, items):
    """Tree batches, each a list of rows, each row a list of (sample indices, prefix) units."""
    pa = tree_prefix([items[i]["input_ids"] for i in (0, 1, 2)], [items[i]["labels"] for i in (0, 1, 2)])
    pb = tree_prefix([items[i]["input_ids"] for i in (3, 4)], [items[i]["labels"] for i in (3, 4)])
    tree_a, tree_b, alone = ((0, 1, 2), pa), ((3, 4), pb), ((5,), 0)
    plans = {"one-row": [[[tree_a, alone, tree_b]]],  # several trees in a row, mixed with an ordinary sample
             "two-rows": [[[tree_b, tree_a], [alone]]],  # a batch of two rows, the second padded
             "accumulated": [[[tree_a]], [[alone, tree_b]]]}  # gradient accumulation: two micro-batches
    out = []
    for rows in plans[layout]:
        built = []
        for units in rows:
            picked = [items[i] for unit, _ in units for i in unit]
            built.append(tree_row(picked, [(len(unit), prefix) for unit, prefix in units]))
        batch = PackedCollator(pad_id=0)(built)
        batch.pop(REAL_TOKENS)
        out.append(batch)
    return out


def chunked_parts(model, batch, chunk_size=4):
    no_logits = torch.empty(0, dtype=torch.long)
    out = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                attention_mask=batch.get("attention_mask"), logits_to_keep=no_logits, output_hidden_states=True,
                use_cache=False)
    return loss_parts(out.hidden_states[-1], output_head(model), labels=batch["labels"],
                      position_ids=batch.get("position_ids"), chunk_size=chunk_size)


def global_loss(model, batches, reduction):
    """The loss of a global batch as the Trainer takes it: every micro-batch's share, summed."""
    total = sum(count_items(b["labels"], b.get("position_ids"), reduction) for b in batches)
    return sum(reduce_loss(chunked_parts(model, b), reduction, num_items=total) for b in batches)


def tree_vs_alone(model, layout, reduction):
    """Relative differences (loss, worst parameter gradient) between the tree batches and every sample alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    items = equality_items()
    tree_loss = global_loss(model, batches_of(layout, items), reduction)
    g_tree = torch.autograd.grad(tree_loss, params)
    alone_loss = global_loss(model, [PadCollator(pad_id=0)([item]) for item in items], reduction)
    g_alone = torch.autograd.grad(alone_loss, params)
    loss_rel = abs(float(tree_loss - alone_loss)) / abs(float(alone_loss))
    grad_rel = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-300)) for a, b in zip(g_tree, g_alone))
    return loss_rel, grad_rel


@pytest.fixture(autouse=True)
def float64_norms(monkeypatch):
    """Llama's RMSNorm computes in float32 even in a float64 model. Alone, every token goes through it the same way;
    in a tree a prefix token's gradient is the sum over its branches *before* that float32 step, so the two differ by
    float32 rounding (~1e-8). Here the norm computes in the input's dtype, so the check is float64-exact."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(LlamaRMSNorm, "forward", forward)


CASES = {"s2-gqa": ("s2_attn", 4, 2), "s2-odd-heads-one-kv": ("s2_attn", 5, 1), "full-gqa": ("packed_causal", 4, 2)}


@pytest.mark.parametrize("reduction", ["token", "sample"])
@pytest.mark.parametrize("layout", ["one-row", "two-rows", "accumulated"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_tree_row_gives_its_samples_their_own_loss_and_gradients(case, layout, reduction, monkeypatch):
    model = lora_plus_model(*CASES[case])
    loss_rel, grad_rel = tree_vs_alone(model, layout, reduction)
    assert loss_rel <= 1e-9 and grad_rel <= 1e-9, (loss_rel, grad_rel)

    # the leaky control: each branch also sees the branches before it in the tree; the same check fails
    def leaky(spans, k):
        return torch.cat([torch.arange(start, end) for start, end in spans[:k + 1]])

    monkeypatch.setattr(s2attn, "branch_key_tokens", leaky)
    leak_loss, leak_grad = tree_vs_alone(model, layout, reduction)
    assert leak_loss > 1e-6 and leak_grad > 1e-4, (leak_loss, leak_grad)


@pytest.mark.parametrize("attn", ["s2_attn", "packed_causal"])
def test_tree_rows_are_exact_under_gradient_checkpointing(attn):
    model = lora_plus_model(attn, 4, 2)
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_rel, grad_rel = tree_vs_alone(model, "one-row", "sample")
    assert loss_rel <= 1e-9 and grad_rel <= 1e-9, (loss_rel, grad_rel)


def test_eval_mode_gives_every_branch_the_logits_of_its_sample_alone():
    model = lora_plus_model("s2_attn", 4, 2).eval()
    items = equality_items()
    (batch,) = batches_of("one-row", items)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], output_hidden_states=True,
                       use_cache=False).hidden_states[-1][0]
        alone = model(input_ids=torch.tensor([items[1]["input_ids"]]), output_hidden_states=True,
                      use_cache=False).hidden_states[-1][0]
    start = len(items[0]["input_ids"])  # branch 2 of tree a follows the root (sample 0 whole)
    prefix = int(batch["position_ids"][0, start])
    torch.testing.assert_close(hidden[start:start + len(alone) - prefix], alone[prefix:], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("attn", ["s2_attn", "packed_causal"])
def test_tree_rows_train_under_bf16_autocast_close_to_float64(attn):
    model = lora_plus_model(attn, 4, 2)
    (batch,) = batches_of("one-row", equality_items())
    exact = float(global_loss(model, [batch], "token"))
    model = model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = global_loss(model, [batch], "token")
    loss.backward()
    assert abs(float(loss) - exact) < 0.05 * abs(exact)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters()
               if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def test_packing_tree_on_the_command_line_and_what_it_refuses_before_the_model_loads():
    from schemas.resolve import resolve
    from schemas.train import TrainConfig
    from sft.run import COMMAND

    assert COMMAND.overrides(["--packing"]) == {"packing": True}  # the switch of before still works
    assert COMMAND.overrides(["--no-packing"]) == {"packing": False}
    over = COMMAND.overrides(["--packing", "tree", "--tree-max-branches", "8"])
    cfg = resolve(TrainConfig, {}, over)
    assert cfg.packing == "tree" and cfg.tree_max_branches == 8 and cfg.tree_min_prefix == 256
    assert resolve(TrainConfig, {}, {"packing": "true"}).packing is True
    for bad, message in (({"wrap": "roll"}, "packing: tree needs wrap: none"),
                         ({"mode": "extend"}, "packing: tree groups the samples of a built dataset"),
                         ({"context_parallel": 2, "max_length": 4096}, "does not support packing: tree"),
                         ({"packing": "forest"}, "packing")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{"packing": "tree", **bad})


# ----------------------------------------------------------------------------------------------------------------------
# Training with packing: tree (sft.train)
# ----------------------------------------------------------------------------------------------------------------------


def write_built(folder, rows) -> str:
    """A builder-like output folder (DIR/tokenized, a DatasetDict) of tokenized samples with doc_id."""
    import datasets

    out = [{"id": f"s{i}", **row, "length": len(row["input_ids"]), "n_doc_tokens_dropped": 0}
           for i, row in enumerate(rows)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(out)}).save_to_disk(str(folder / "tokenized"))
    return str(folder)


def test_training_on_tree_rows_reports_the_layout_trains_branches_and_resumes(tiny_llama_dir, tmp_path, caplog):
    import json
    import logging

    from sft.train import run
    from tests.sft.conftest import config
    from tests.sft.test_packing import BatchSpy

    built = write_built(tmp_path / "built", corpus({"a": 6, "b": 1, "c": 4}, doc_length=40))
    spy = BatchSpy()
    caplog.set_level(logging.INFO, logger="sft.train")
    cfg = config(tiny_llama_dir, built, tmp_path / "run", packing="tree", tree_min_prefix=16, tree_max_branches=4,
                 max_length=128, max_steps=2, save_steps=2, per_device_batch_size=1, eval_samples=0)
    result = run(cfg, callbacks=(spy,))
    layout = json.loads((tmp_path / "run/data_stats.json").read_text())["layout"]
    assert layout["layout"] == "tree" and layout["samples"] == 11 and layout["trees"] == 3  # a: 4 + 2, c: 4
    assert layout["prefix_repeats"] == 1 and layout["branches_per_tree_max"] == 4
    assert layout["tokens_alone"] > 2 * layout["tokens"] and layout["supervised_per_computed_token"] > 0
    assert "as 3 trees" in caplog.text and "fewer)" in caplog.text  # the start-up line
    assert spy.attn == "s2_attn" and "attention_mask" not in spy.batches[0]
    pos = spy.batches[0]["position_ids"][0]
    assert bool((torch.diff(pos) < 0).any() & (pos[1:][torch.diff(pos) < 0] > 0).any())  # a branch continues
    assert result.global_step == 2
    resumed = run(cfg.model_copy(update={"max_steps": 3, "resume": True}))
    assert resumed.global_step == 3


def test_experiment_arms_pass_packing_tree_through():
    from sft.experiment import arm_configs
    from schemas.experiment import ExperimentConfig

    cfg = ExperimentConfig.model_validate({
        "name": "trees", "out": "runs/x", "train": "configs/train/smollm2_squad.yaml",
        "eval": {"tasks": ["qa"]},
        "arms": [{"name": "packed", "overrides": {"packing": True}},
                 {"name": "tree", "overrides": {"packing": "tree", "tree_max_branches": 16}}]})
    trains, _ = arm_configs(cfg, check_paths=False)
    assert trains["packed"].packing is True
    assert trains["tree"].packing == "tree" and trains["tree"].tree_max_branches == 16


def test_tree_benchmark_trains_the_same_documents_three_ways():
    import importlib.util
    from pathlib import Path

    import datasets

    path = Path(__file__).resolve().parents[2] / "benchmarks/tree.py"
    spec = importlib.util.spec_from_file_location("tree_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = corpus({"a": 6, "b": 5}, doc_length=40)
    data = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in rows])
    plans = bench.plans(data, max_length=128, steps=2, seed=0, max_branches=8, min_prefix=16, pad_id=0)
    assert list(plans) == list(bench.LAYOUTS) and all(len(plan) == 2 for plan in plans.values())
    per_row = {name: [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b, _ in plan] for name, plan in plans.items()}
    assert min(per_row["tree"]) > 2 * max(per_row["packed"])  # many answers a row for the cost of one document
    assert plans["tree"][0][1] == {"group_size": 32}
