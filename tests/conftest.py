"""Shared fixtures: a tiny Llama with a tokenizer trained here, a toy KB and datasets.

Nothing is downloaded: the tiny model is built from a config with a fixed seed, its BPE
tokenizer is trained in a second on the fixture's own text.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_WIKIMEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikimel"

ENTITIES = [
    {"id": "Q1", "name": "Noel Harrison", "description": "English singer and actor"},
    {"id": "Q2", "name": "Stefanie Powers", "description": "American actress"},
    {"id": "Q3", "name": "Oscar Robertson", "aliases": ["The Big O"]},
    {"id": "Q4", "name": "Francis Condon"},
    {"id": "Q5", "name": "Paris", "description": "capital of France"},
    {"id": "Q6", "name": "Paris", "description": "Trojan prince"},
    {"id": "Q7", "name": "Paris Hilton"},
    {"id": "Q8", "name": "Milwaukee Bucks"},
    {"id": "Q9", "name": "Antoine Griezmann"},
    {"id": "Q10", "name": "Ruud van Nistelrooy"},
]

TRAIN = [
    {"id": "t1", "text": "Powers with Noel Harrison in The Girl from U.N.C.L.E.", "mention": "Powers", "gold": "Q2"},
    {"id": "t2", "text": "Powers with Noel Harrison in The Girl from U.N.C.L.E.", "mention": "Noel Harrison", "gold": "Q1"},
    {"id": "t3", "text": "Robertson as a member of the Milwaukee Bucks", "mention": "Robertson", "gold": "Q3"},
    {"id": "t4", "text": "Griezmann playing in a Madrid derby in 2015.", "mention": "Griezmann", "gold": "Q9"},
    {"id": "t5", "text": "Van Nistelrooy playing for Real Madrid in 2007", "mention": "Van Nistelrooy", "gold": "Q10"},
    {"id": "t6", "text": "Hilton at a party in Paris in 2009", "mention": "Hilton", "gold": "Q7"},
]

TEST = [
    {"id": "m1", "text": "Griezmann playing away to Salamanca in March 2010", "mention": "Griezmann", "gold": "Q9"},
    {"id": "m2", "text": "Francis Condon in the early 20th Century", "mention": "Francis Condon", "gold": "Q4"},
    {"id": "m3", "text": "Harrison singing in 1966", "mention": "Harrison", "gold": "Q1"},
    {"id": "m4", "text": "The Bucks won the title with Robertson", "mention": "Bucks", "gold": "Q8"},
    {"id": "m5", "text": "A view of Paris from the Eiffel Tower", "mention": "Paris", "gold": "Q5"},
]


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caches (tries, embeddings) go to a per-session temp folder, never the user's; the
    packaged SmolLM2 conversion is shared with the user cache, where CI converts it once."""
    cache = tmp_path_factory.getbasetemp() / "gen_linker_cache"
    real = Path(os.environ.get("GEN_LINKER_CACHE", Path.home() / ".cache" / "gen_linker"))
    (cache / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (cache / "models").exists():
        (real / "models").mkdir(parents=True, exist_ok=True)
        (cache / "models").symlink_to(real / "models", target_is_directory=True)
    monkeypatch.setenv("GEN_LINKER_CACHE", str(cache))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A 2-layer Llama (random, seed 0) with a byte-level BPE tokenizer trained on the fixtures.
    Head size 32 and float32 weights: the smallest shape vLLM's CPU attention serves."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llm")
    corpus = [e["name"] for e in ENTITIES] + [r["text"] for r in TRAIN + TEST]
    corpus += ["[Text]", "[Question]What does", "mentioned in the text refer to?[Answer]"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init: beams then really differ
        model.lm_head.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_backend(tiny_llm):
    """The hf backend on the tiny model, float32 (bit-stable scores), for the whole session."""
    from gen_linker.backends.hf import HFBackend

    return HFBackend(str(tiny_llm), dtype="float32")


TRIE_NAMES = ["Noel Harrison", "Stefanie Powers", "Oscar Robertson", "Paris", "Paris Hilton",
              "Milwaukee Bucks", "Antoine Griezmann", "Francis Condon", "Francis Drake", "Noel Coward"]


@pytest.fixture(scope="session")
def tiny_trie(hf_backend):
    """The trie of TRIE_NAMES for the tiny model's tokenizer, ending names with EOS."""
    from gen_linker.trie import name_trie

    return name_trie(TRIE_NAMES, hf_backend.tokenizer, hf_backend.tokenizer.eos_token_id)


@pytest.fixture(scope="session")
def vllm_backend(tiny_llm):
    """One real in-process vLLM engine (CPU, float32) on the tiny model for the whole session."""
    from gen_linker.backends import load_backend

    backend = load_backend("vllm", str(tiny_llm), dtype="float32", kv_cache_gb=0.125)
    yield backend
    backend.close()


@pytest.fixture
def entities_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "entities.jsonl", ENTITIES)


@pytest.fixture
def kb(entities_file):
    from gen_linker.kb import KnowledgeBase

    return KnowledgeBase.from_jsonl(entities_file)


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", TRAIN)


@pytest.fixture
def test_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "test.jsonl", TEST)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (random, seed 0) with a WordPiece tokenizer trained on the fixtures: what
    the reranker tests train cross-encoders and bi-encoders from, in seconds."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    corpus = [f"{e['name']}: {e.get('description', '')}" for e in ENTITIES] + [r["text"] for r in TRAIN + TEST]
    # the vocabulary is written out, not trained: WordPiece training breaks ties in hash order,
    # which made the tiny model (and what the reranker tests learn) differ from run to run
    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    pieces = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in pieces for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *(w for w in pieces if len(w) > 1)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder
