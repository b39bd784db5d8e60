"""The tokenizer the RULER parity fixtures were made with: one token per word or run of punctuation (the
``Whitespace`` pre-tokenizer, every token ``[UNK]``), a ChatML chat template. Built from code, so it is the same on
every machine and version (``scripts/ruler_fixtures.py`` and ``tests/sft/test_ruler.py`` both use it)."""
from __future__ import annotations

from tests.conftest import CHATML


def make_word_tokenizer(path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="[UNK]")
    fast.chat_template = CHATML
    fast.save_pretrained(str(path))
    return str(path)
