"""Issue 21: a sample's ids are its whole rendered text's, for the tokenizer kinds users bring.

Three tokenizers are trained in-process on the same text: SentencePiece-style (Metaspace with a prepended ``▁``,
as Llama-2, Mistral v0.1 and Gemma; no pre-tokenizer split), byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2) and BPE
over whitespace-split words. Each renders the chat (Llama-2-chat's template), llama2-inst and alpaca templates, with
documents shared by many questions (the cached path) and documents of their own; wherever nothing is cut, the ids
equal the whole text tokenized at once and the trained tokens are the answer and its end of turn.
"""
from __future__ import annotations

import numpy as np
import pytest

from longqa.render import Renderer
from longqa.tokenize import MIN_CACHED_CHARS, Encoder
from schemas.labels import IGNORE_INDEX
from tests.longqa.fixtures import config, record

LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


def article(i: int, sentences: int = 60) -> str:
    return " ".join(f"Sentence {k} of article {i} says the Normans reached {k % 7} towns in {1000 + k}."
                    for k in range(sentences))


def corpus_text() -> list[str]:
    return [article(i) for i in range(3)] + ["Who gave their name to Normandy? The Normans. What year? 1066.",
                                             "[INST] <<SYS>> <</SYS>> [/INST] ### Instruction: Response: Input:"]


def make(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    if kind == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
        # trained on words (SentencePiece's pieces never span a ▁ inside), run on the whole text as Llama-2's is
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    elif kind == "byte-level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:  # BPE over whitespace-split words (no byte level, no WordPiece)
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.BPEDecoder()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind == "byte-level" else []
    tok.train_from_iterator(corpus_text() * 5, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                                   initial_alphabet=alphabet, show_progress=False))
    if kind == "sentencepiece":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = LLAMA2_CHAT
    return fast


KINDS = ("sentencepiece", "byte-level", "bpe-words")
TEMPLATES = ("chat", "llama2-inst", "alpaca")


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return make(request.param)


@pytest.mark.parametrize("template", TEMPLATES)
def test_ids_are_the_whole_texts_for_shared_and_unique_documents(tokenizer, template, tmp_path):
    cfg = config(tmp_path, template=template, max_length=100_000)
    renderer, encoder = Renderer(cfg, tokenizer), Encoder(tokenizer, cfg.max_length, cfg.truncation)
    samples, keys = [], []
    for i in range(3):  # article i: 1 + 2i questions; articles 1 and 2 are long and shared: the cached path
        for q in range(1 + 2 * i):
            samples.append(renderer.render(record(doc=article(i, sentences=5 if i == 0 else 60),
                                                  question=f"What did sentence {q} of article {i} say?",
                                                  answer=f"{q % 7} towns", system="Answer briefly.")))
            keys.append(f"a{i}")
    assert len(samples[-1].material) >= MIN_CACHED_CHARS
    for sample, enc in zip(samples, encoder.encode(samples, keys) + encoder.encode(samples[::-1], keys[::-1])[::-1]):
        whole = tokenizer(sample.text, add_special_tokens=False).input_ids
        assert enc.input_ids.tolist() == whole and enc.n_doc_tokens_dropped == 0
        trained = tokenizer.decode(enc.input_ids[enc.labels != IGNORE_INDEX].tolist())
        assert trained.replace(" ", "") == (sample.answer + sample.end).replace(" ", "")
        assert np.array_equal(enc.labels[enc.labels != IGNORE_INDEX], enc.input_ids[enc.labels != IGNORE_INDEX])


@pytest.mark.parametrize("policy", ["middle", "head", "tail"])
def test_only_the_documents_tokens_are_cut_and_each_is_counted(tokenizer, policy, tmp_path):
    rendered = Renderer(config(tmp_path, template="llama2-inst"), tokenizer).render(
        record(doc=article(1), answer="3 towns"))
    whole = tokenizer(rendered.text, add_special_tokens=False).input_ids
    budget = len(whole) - 150
    enc = Encoder(tokenizer, budget, policy).encode([rendered], ["d"])[0]
    assert len(enc.input_ids) == budget and enc.n_doc_tokens_dropped == 150
    ids = enc.input_ids.tolist()
    # the tokens outside the document are the whole text's: the template, question, answer and end untouched
    first_doc = next(i for i in range(len(whole)) if whole[i] != ids[i]) if policy != "head" else None
    n_prefix = len(tokenizer(rendered.prefix, add_special_tokens=False).input_ids) - 1  # its last may join the text
    assert ids[-8:] == whole[-8:] and ids[:n_prefix] == whole[:n_prefix]
    if first_doc is not None:
        assert first_doc >= n_prefix
    assert tokenizer.decode(enc.input_ids[enc.labels != IGNORE_INDEX].tolist()).replace(" ", "").startswith("3towns")


@pytest.mark.parametrize("template", TEMPLATES)
def test_spans_found_without_offsets_equal_the_spans_from_offsets(tokenizer, template, tmp_path):
    """Unique documents take the path without character offsets (their conversion cost more than tokenizing): the
    document span and the trained tokens must be those the offsets give, or the sample is handed to the offsets path.
    A byte-level tokenizer (SmolLM2, Llama-3, Qwen) must take the fast path for every sample whose prompt does not
    end in a space (a space before a word is that word's token: " Sentence")."""
    cfg = config(tmp_path, template=template, max_length=100_000)
    renderer, encoder = Renderer(cfg, tokenizer), Encoder(tokenizer, cfg.max_length, cfg.truncation)
    samples = [renderer.render(record(doc=article(i, sentences=3 + 4 * i), question=f"What of article {i}?",
                                      answer=f"{i} towns", system="Answer briefly." if i % 2 else None))
               for i in range(4)]
    out = [None] * len(samples)
    fallback = encoder._plain(samples, list(range(len(samples))), out)
    for i, sample in enumerate(samples):
        expected = encoder._tokens([sample.text])[0].located(sample)
        if i in fallback:
            assert out[i] is None
            continue
        got = out[i]
        assert np.array_equal(got.ids, expected.ids) and (got.d0, got.d1) == (expected.d0, expected.d1)
        assert np.array_equal(got.labeled, expected.labeled) and got.labeled.any()
    if type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel":
        assert fallback == [i for i, sample in enumerate(samples) if sample.prefix.endswith(" ")]
        assert len(fallback) < len(samples)


@pytest.mark.parametrize("policy", ["middle", "head", "tail"])
def test_the_questions_of_a_document_share_one_cut_of_it(tokenizer, policy, tmp_path):
    """Issue 22: an over-long document is cut once, to the budget its longest question and answer leave, so every
    question of it holds the same kept document (the prefix a tree shares); before, each question had its own cut."""
    cfg = config(tmp_path, template="llama2-inst", max_length=100_000)
    renderer = Renderer(cfg, tokenizer)
    doc = article(1)
    questions = ["Why?", "What did the fifth sentence of the article say about the towns and the years they name?"]
    answers = ["3 towns", "It says the Normans reached five towns in the year one thousand and four, and more later."]
    samples = [renderer.render(record(doc=doc, question=q, answer=a)) for q, a in zip(questions, answers)]
    whole = [len(tokenizer(s.text, add_special_tokens=False).input_ids) for s in samples]
    budget = max(whole) - 120  # the longest sample loses 120 document tokens, the shortest would lose fewer alone
    encoded = Encoder(tokenizer, budget, policy).encode(samples, ["d", "d"])
    assert [e.n_doc_tokens_dropped for e in encoded] == [120, 120]
    assert len(encoded[1].input_ids) == budget and len(encoded[0].input_ids) < budget
    a, b = (e.input_ids.tolist() for e in encoded)
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert common >= encoded[0].n_doc_tokens - 120  # the template and the whole kept document, token for token
    alone = Encoder(tokenizer, budget, policy).encode(samples[:1], ["d"])[0]
    assert alone.n_doc_tokens_dropped < 120  # alone, the short question's sample would be cut less
