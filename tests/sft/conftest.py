"""Tiny Llama checkpoints (2 layers, hidden 64, 4 heads / 2 KV heads, vocabulary 400) saved with a tiny tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest

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
