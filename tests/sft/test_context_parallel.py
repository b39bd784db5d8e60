"""S2-Attn context parallelism (sft.context_parallel, issue 14): slicing rules, and the proof by equality.

The proof: 4 CPU processes (gloo) train tiny Llamas in float64 with the sequence cut into P = 4 slices, and into P = 2
slices with 2 data-parallel replicas; loss and every trainable gradient (LoRA, embeddings, norms) equal those of one
process training the whole sequences with S2-Attn. A broken exchange (no halo, or the wrong neighbour) differs.
One launch of 4 processes runs every case (process start-up dominates the cost).
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import pytest
import torch

from schemas.train import cp_length_works, cp_working_lengths
from sft import context_parallel as cp_mod
from sft.context_parallel import ContextParallel, padded_length, slice_batch
from sft.loss import shift_labels_of

VOCAB = 64
WORLD = 4


@dataclasses.dataclass(frozen=True)
class Case:
    heads: int  # query heads
    kv_heads: int
    size: int  # P; the 4 processes hold 4 / P data-parallel replicas
    lengths: tuple[int, ...]  # real tokens of each row of the global batch (rows split evenly over the replicas)
    width: int  # padded row length N
    s2: dict = dataclasses.field(default_factory=dict)  # the model config's s2_attn settings
    tied: bool = True
    checkpointing: bool = False
    broken: str | None = None  # "no_halo" or "wrong_neighbour"


CASES = {
    # GQA, G = 12 (ratio 1/4 of 48), P = 4: one group a slice; a short row leaves whole slices of padding
    "p4_gqa": Case(6, 2, 4, (48, 31), 48),
    # odd head count sharing a KV head across the halves (9 / 3: split 4), P = 2 x 2 replicas, untied head
    "p2x2_odd_heads": Case(9, 3, 2, (48, 29, 40, 13), 48, tied=False),
    # 5 heads without GQA (2 unshifted, 3 shifted), odd G = 3 (halo of 2 tokens, head of 1), P = 4
    "p4_odd_group": Case(5, 5, 4, (24, 20), 24, s2={"group_size": 3}),
    # activation checkpointing: the recomputed forward exchanges the halo again, inside the backward
    "p2x2_checkpointing": Case(6, 2, 2, (32, 30, 17, 32), 32, checkpointing=True),
    # p4_gqa with a broken exchange: it must not match
    "p4_no_halo": Case(6, 2, 4, (48, 31), 48, broken="no_halo"),
    "p4_wrong_neighbour": Case(6, 2, 4, (48, 31), 48, broken="wrong_neighbour"),
}


# ----------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_padded_length_makes_whole_groups_per_slice():
    # G is the run's (from max_length): rows are padded to the next multiple of P x G
    assert padded_length(45, 2, 12, 64) == 48 and padded_length(48, 4, 12, 64) == 48
    assert padded_length(41, 2, 11, 44) == 44 and padded_length(1, 2, 2, 64) == 4
    assert cp_length_works(40, 4, 0.25) and not cp_length_works(42, 2, 0.25)
    assert not cp_length_works(64, 8, 0.25)  # G = 16 > 64 / 8: no length works with P x ratio > 1
    with pytest.raises(ValueError, match="no row length between 61 and max_length 63"):
        padded_length(61, 4, 4, 63)
    assert cp_working_lengths(4098, 2, 0.25) == [4092, 4096, 4100, 4104]


def test_labels_are_shifted_before_slicing():
    ids = torch.arange(10, 22).reshape(1, 12)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(12)[None],
             "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    parts = [slice_batch(batch, r, 3) for r in range(3)]
    assert parts[1]["input_ids"].tolist() == [[14, 15, 16, 17]]
    assert parts[1]["position_ids"].tolist() == [[4, 5, 6, 7]]  # global positions: RoPE sees true positions
    assert parts[0]["shift_labels"].tolist() == [[11, 12, 13, 14]]  # the last token of a slice predicts the next's
    assert parts[2]["shift_labels"].tolist() == [[19, 20, 21, -100]]
    assert set(parts[0]) == {"input_ids", "position_ids", "shift_labels", "attention_mask"}


def test_packed_rows_and_left_padding_are_refused():
    ids = torch.ones(1, 8, dtype=torch.long)
    packed = {"input_ids": ids, "labels": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])}
    with pytest.raises(ValueError, match="packed rows"):
        slice_batch(packed, 0, 2)
    left = {"input_ids": ids, "labels": ids, "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])}
    with pytest.raises(ValueError, match="right padding only"):
        slice_batch(left, 0, 2)
    with pytest.raises(ValueError, match="packed rows or left padding"):
        cp_mod.local_lengths((((0, 3), (3, 8)),), 8)


def test_neighbours_of_consecutive_groups():
    assert ContextParallel.for_rank(0, 2) == ContextParallel(rank=0, size=2, send_to=1, recv_from=None)
    assert ContextParallel.for_rank(3, 2) == ContextParallel(rank=1, size=2, send_to=None, recv_from=2)
    middle = ContextParallel.for_rank(5, 4)
    assert (middle.rank, middle.send_to, middle.recv_from) == (1, 6, 4)


# ----------------------------------------------------------------------------------------------------------------------
# Proof by equality: P slices in P processes == one process on whole sequences
# ----------------------------------------------------------------------------------------------------------------------


def build_model(case: str):
    """A float64 tiny Llama with S2-Attn, wrapped with LoRA+ (LoRA B randomised so every LoRA gradient is non-zero)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sft.model import add_lora_plus

    c = CASES[case]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=8 * c.heads, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=c.heads, num_key_value_heads=c.kv_heads, head_dim=8,
                         max_position_embeddings=64, tie_word_embeddings=c.tied, use_cache=False, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    config.s2_attn = c.s2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="s2_attn")
    if c.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora_plus(model, r=4, alpha=8)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model.double().train()


def make_batch(case: str) -> dict[str, torch.Tensor]:
    """Right-padded rows; the first third of each sample is an unsupervised prompt (-100), as in SFT."""
    lengths, width = CASES[case].lengths, CASES[case].width
    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, VOCAB, (len(lengths), width), generator=gen)
    real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    prompt = torch.arange(width)[None, :] < (torch.tensor(lengths) // 3)[:, None]
    input_ids[~real] = 0
    return {"input_ids": input_ids, "attention_mask": real.long(),
            "labels": input_ids.masked_fill(~real | prompt, -100),
            "position_ids": torch.arange(width).expand(len(lengths), width).clone()}


def token_loss_sum(logits: torch.Tensor, shift_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the cross-entropy over supervised positions, and their count."""
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), reduction="sum")
    return loss, (shift_labels != -100).sum()


def trainable_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def reference(case: str):
    """One process, whole sequences: mean loss over the supervised tokens of the global batch and its gradients."""
    model = build_model(case)
    batch = make_batch(case)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits
    total, count = token_loss_sum(logits, shift_labels_of(batch["labels"]))
    loss = total / count
    loss.backward()
    return loss.detach(), trainable_grads(model)


def sliced(case: str, rank: int, world: int):
    """This rank's part of the global batch: its replica's rows, its slice of them; loss = local sum / global count;
    gradients summed over all ranks (what DDP's mean does to a loss scaled by the world size)."""
    import torch.distributed as dist

    size, broken = CASES[case].size, CASES[case].broken
    model = build_model(case)
    batch = make_batch(case)
    rows = batch["input_ids"].shape[0] // (world // size)
    replica = slice(rank // size * rows, (rank // size + 1) * rows)
    local = slice_batch({k: v[replica] for k, v in batch.items()}, rank % size, size)
    cp = ContextParallel.for_rank(rank, size)
    if broken == "no_halo":
        cp = dataclasses.replace(cp, send_to=None, recv_from=None)
    elif broken == "wrong_neighbour":  # halos travel left instead of right
        cp = dataclasses.replace(cp, send_to=cp.recv_from, recv_from=cp.send_to)
    cp_mod.attach(model, cp)
    logits = model(input_ids=local["input_ids"], attention_mask=local["attention_mask"],
                   position_ids=local["position_ids"]).logits
    total, count = token_loss_sum(logits, local["shift_labels"])
    dist.all_reduce(count)
    loss = total / count
    loss.backward()
    grads = trainable_grads(model)
    for grad in grads.values():
        dist.all_reduce(grad)
    loss = loss.detach()
    dist.all_reduce(loss)
    return loss, grads, dataclasses.asdict(cp.stats)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # a lost message fails the test instead of hanging it
    try:
        results = {case: sliced(case, rank, world) for case in CASES}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sliced_results(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("cp")
    out_file = folder / "results.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # forkserver: one process imports torch/transformers/peft once and forks the 4 workers (spawn would import them
    # 4 times, ~7 s of CPU each); it runs no torch op before forking, so no thread pool is copied
    mp.set_forkserver_preload([__name__, "peft", "sft.model", "transformers.models.llama.modeling_llama"])
    mp.start_processes(_worker, args=(WORLD, str(folder / "init"), str(out_file)), nprocs=WORLD, join=True,
                       start_method="forkserver")
    return torch.load(out_file)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c].broken is None])
def test_slices_train_exactly_like_whole_sequences(sliced_results, case):
    loss, grads, stats = sliced_results[case]
    ref_loss, ref_grads = reference(case)
    torch.testing.assert_close(loss, ref_loss, atol=1e-12, rtol=1e-10)
    # rank 0 sent, per layer, G - G // 2 tokens of the shifted half's KV heads (keys and values, float64), and got as
    # much gradient back; with activation checkpointing the recomputed forward sends its halo again
    c = CASES[case]
    group = c.s2.get("group_size", c.width // 4)
    shifted_kv = c.kv_heads - (c.heads // 2) // (c.heads // c.kv_heads)
    rows = len(c.lengths) // (WORLD // c.size)
    halo_bytes = 2 * rows * (group - group // 2) * shifted_kv * 8 * 8  # (k, v) x B x halo x heads x head_dim x 8 B
    layers = 2 * (2 if c.checkpointing else 1)
    assert stats == {"bytes_forward": layers * halo_bytes, "bytes_backward": 0, "exchanges": layers}
    assert grads.keys() == ref_grads.keys()
    kinds = {kind for name in grads for kind in ("lora_A", "lora_B", "embed", "norm") if kind in name}
    assert kinds == {"lora_A", "lora_B", "embed", "norm"}  # every kind of trainable parameter is compared
    for name, grad in grads.items():
        assert bool(ref_grads[name].abs().max() > 0), name
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-11, rtol=1e-9, msg=name)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c].broken is not None])
def test_a_broken_exchange_is_caught(sliced_results, case):
    loss, grads, _ = sliced_results[case]
    ref_loss, ref_grads = reference(case)
    worst = max(float((grads[name] - ref_grads[name]).abs().max()) for name in grads)
    assert abs(float(loss - ref_loss)) > 1e-6 and worst > 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# Configuration and launch
# ----------------------------------------------------------------------------------------------------------------------


def test_config_reports_every_context_parallel_problem_at_once():
    from pydantic import ValidationError

    from schemas.train import TrainConfig

    assert TrainConfig(context_parallel=4, max_length=4096).context_parallel == 4  # G = 1024 = 4096 / 4
    with pytest.raises(ValidationError) as error:
        TrainConfig(context_parallel=2, max_length=4098, wrap="roll", loss_reduction="sample", packing=True)
    message = str(error.value)
    assert "needs wrap: none" in message and "loss_reduction: token only" in message
    assert "needs unpacked rows (packing: false)" in message
    assert "max_length 4098 / 2 is not a whole number of S2-Attn groups" in message
    assert "max_length values that work: 4092, 4096, 4100, 4104" in message
    with pytest.raises(ValidationError, match="shorter than one S2-Attn group .* lower group_size_ratio to 1/8"):
        TrainConfig(context_parallel=8, max_length=4096)
    with pytest.raises(ValidationError, match="needs s2_attn: true; full attention would need ring attention"):
        TrainConfig(context_parallel=2, s2_attn=False)


def test_launch_must_hold_whole_groups(monkeypatch):
    from schemas.errors import ConfigError

    assert cp_mod.setup(1) is None
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("RANK", "5")
    assert cp_mod.setup(3) == ContextParallel(rank=2, size=3, send_to=None, recv_from=4)
    with pytest.raises(ConfigError,
                       match="multiple of 4 processes .* world size of 6; e.g. torchrun --nproc-per-node 4"):
        cp_mod.setup(4)


def test_collator_pads_rows_to_whole_groups_per_slice():
    from sft.data import PadCollator

    collate = cp_mod.ContextParallelCollator(PadCollator(pad_id=0, max_length=64), 0, 2, 12, 64)
    batch = collate([{"input_ids": list(range(3, 48)), "labels": list(range(3, 48))}])  # 45 tokens -> 48
    assert batch["input_ids"].shape == (1, 48) and batch["labels"][0, 45:].tolist() == [-100] * 3
    assert batch["attention_mask"][0].sum() == 45 and batch["position_ids"][0].tolist() == list(range(48))


@pytest.mark.slow
def test_sft_run_with_two_slices_trains_like_one_process(tiny_llama_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m sft.run --context-parallel 2` logs the losses and gradient norms of one process
    training whole samples, at a padding that differs: one process pads the batch to 41 tokens, two slices to 44.
    G is round(0.25 x max_length) = 11 in both (before: 10 in one process, from the padded 41, and 11 sliced)."""
    import json
    import subprocess
    import sys

    import yaml

    from schemas.train import TrainConfig
    from sft.train import run
    from tests.sft.test_data import write_tokenized
    from tests.sft.test_distributed import ROOT, launch_env

    data = write_tokenized(tmp_path / "built", [24, 32, 40, 41])  # one batch of all 4: the same samples every step
    common = dict(model=tiny_llama_dir, data=data, max_length=44, max_steps=2, save_steps=2, learning_rate=1e-2,
                  warmup_steps=0, bf16=False, per_device_batch_size=4, seed=0, eval_samples=0)
    single = run(TrainConfig(**common, output_dir=str(tmp_path / "single")))
    recipe = tmp_path / "cp.yaml"
    recipe.write_text(yaml.safe_dump({**common, "output_dir": str(tmp_path / "cp"), "context_parallel": 2}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sft.run",
           "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "every sample cut into 2 slices, 1 data-parallel replica(s)" in proc.stdout

    def logged(folder):
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [value for line in lines if "loss" in line for value in (line["loss"], line["grad_norm"])]

    expected = logged(single.output_dir)
    assert len(expected) == 4  # 2 steps, each a loss and a gradient norm
    assert logged(tmp_path / "cp") == pytest.approx(expected, rel=1e-4)


def test_command_line_flag_and_launch_check(monkeypatch, tmp_path, capsys):
    from sft.run import main
    from tests.sft.test_data import write_tokenized

    monkeypatch.setenv("WORLD_SIZE", "2")
    given = ["--data", write_tokenized(tmp_path / "built", [20]), "--output-dir", str(tmp_path / "run"),
             "--print-config"]
    assert main(["--context-parallel", "2", *given]) == 0
    assert "context_parallel: 2" in capsys.readouterr().out
    assert main(["--context-parallel", "4", "--max-length", "4098", *given]) == 2
    err = capsys.readouterr().err
    assert "needs a launch of a multiple of 4 processes" in err and "max_length 4098 / 4" in err
