"""Shared fixtures: a tiny byte-level BPE tokenizer with a ChatML chat template, built in-process (no network)."""
from __future__ import annotations

import pytest

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "Question answering over long documents needs the model to find a short span far away from the question.",
    "Shifted sparse attention splits the context into groups and shifts half of the heads by half a group.",
] * 20


def make_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(path))
    return str(path)


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub online for one test whatever the environment (HF_HUB_OFFLINE=1 exported, as on an air-gapped
    machine): the variables cleared, and the library's copy of them, which it reads once when imported."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory):
    """A folder holding a tiny fast tokenizer with a ChatML template (vocabulary of 400)."""
    return make_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_path)


@pytest.fixture(scope="session")
def default_build(tmp_path_factory):
    """The embedded default build (`python -m longqa.build`, the README's first step) in a temporary folder.

    Only the slow tests use it (about 20 s on 2 cores): the real SQuAD v2 dev articles and the SmolLM2 tokenizer.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("default-build") / "out"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "longqa.build", "--out", str(out), "--no-progress"], cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture(autouse=True)
def _precision_without_probe(monkeypatch, tmp_path_factory):
    """`bf16: null` in-process: float32, without timing a probe (a timing would make a test's precision depend on
    the machine's load). tests/sft/test_precision.py tests the probe itself; subprocesses (the slow tests) run it,
    with their cache in a temporary folder rather than the user's."""
    import sft.precision

    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path_factory.getbasetemp() / "longqa-cache"))
    monkeypatch.setattr(sft.precision, "probe_seconds", lambda *a, **k: {"float32": 1.0, "bf16": 1.0})
