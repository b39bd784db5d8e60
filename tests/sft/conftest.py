"""Tiny Llama checkpoints (2 layers, hidden 64, 4 heads / 2 KV heads, vocabulary 400) saved with a tiny tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.labels import IGNORE_INDEX
from schemas.train import TrainConfig

from tests.conftest import make_tokenizer

TINY_LLAMA = dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_parameters={"rope_type": "default",
                                                                                        "rope_theta": 10000.0})


def tiny_llama_config(**overrides):
    """A `LlamaConfig` of the tiny model; `overrides` replace fields (e.g. ``tie_word_embeddings=False``)."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY_LLAMA, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **overrides})


def make_tiny_llama(path, *, seed: int = 0, **overrides) -> str:
    """Save a randomly initialised tiny `LlamaForCausalLM` (float32 safetensors) and the tiny tokenizer to `path`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    with torch.no_grad():  # norms start at 1; perturb them so that a model that drops them is told apart
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    make_tokenizer(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A folder with a tiny Llama whose input and output embeddings are tied, plus a ChatML tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_llama_untied_dir(tmp_path_factory):
    """Like `tiny_llama_dir`, with a separate output embedding (lm_head)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-untied"), tie_word_embeddings=False)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers shared by the sft tests
# ----------------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def write_tokenized(folder, lengths: list[int], *, split: str = "train") -> str:
    """A builder-like output folder: DIR/tokenized is a DatasetDict; labels mask all but the last 2 tokens."""
    import datasets

    rows = []
    for i, n in enumerate(lengths):
        ids = [3 + (i + j) % 50 for j in range(n)]
        rows.append({"id": f"s{i}", "doc_id": "d", "input_ids": ids, "labels": [IGNORE_INDEX] * (n - 2) + ids[-2:],
                     "length": n, "n_doc_tokens": n - 4, "n_doc_tokens_dropped": 0, "seq": i})
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows)}).save_to_disk(str(folder / "tokenized"))
    return str(folder)


def launch_env() -> dict:
    """The test's environment, one thread a process (two processes share the cores), the checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false"}


def config(model: str, data: str, out: Path, **overrides) -> TrainConfig:
    """A tiny run: 64-token context grown to 512 by RoPE interpolation (the tiny Llama has 256 positions)."""
    settings = dict(model=model, data=data, output_dir=str(out), max_length=512, max_steps=3, save_steps=2,
                    learning_rate=1e-3, warmup_steps=0, bf16=False, per_device_batch_size=2, seed=0)
    return TrainConfig(**{**settings, **overrides})
