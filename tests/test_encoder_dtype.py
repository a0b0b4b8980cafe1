"""The sentence encoders in bfloat16 (CPU autocast): the same unit rows as float32 up to bf16's
precision, chosen by the linker spec (`--encoder-dtype`), and `auto` resolved per processor."""
from __future__ import annotations

import numpy as np
import pytest

from gen_linker.encoders import SentenceEncoder
from gen_linker.errors import GenLinkerError
from gen_linker.spec import SpecError
from gen_linker.loader import load_linker

TEXTS = ["Noel Harrison was an English singer", "Stefanie Powers, American actress",
         "Oscar Robertson played basketball", "a statue of Francis Condon in Rhode Island"] * 3


def test_bfloat16_rows_are_float32_unit_rows_close_to_float32(tiny_bert):
    full = SentenceEncoder(str(tiny_bert)).encode(TEXTS)
    half = SentenceEncoder(str(tiny_bert), dtype="bfloat16").encode(TEXTS)
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    cos = (full * half).sum(axis=1)
    assert cos.min() > 0.99                       # bf16 keeps ~3 significant digits per product
    assert not np.array_equal(full, half)         # and it did run in bf16: not the float32 rows
    # the nearest text of each text is the same both ways
    assert ((full @ full.T).argsort(1)[:, -2] == (half @ half.T).argsort(1)[:, -2]).all()


def test_auto_follows_the_processor_and_an_unknown_dtype_is_refused(tiny_bert, monkeypatch):
    monkeypatch.setenv("GEN_LINKER_DTYPE", "float32")         # what `auto` means, forced
    assert SentenceEncoder(str(tiny_bert), dtype="auto").dtype == "float32"
    monkeypatch.setenv("GEN_LINKER_DTYPE", "bfloat16")
    assert SentenceEncoder(str(tiny_bert), dtype="auto").dtype == "bfloat16"
    with pytest.raises(GenLinkerError, match="float16"):
        SentenceEncoder(str(tiny_bert), dtype="float16")


def test_the_spec_chooses_the_linkers_encoder_dtype(entities_file, tiny_bert, test_file):
    from gen_linker import datasets

    mentions = datasets.load(test_file).valid
    spec = {"linker": "retrieval", "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "bfloat16"}}
    bf16 = load_linker(entities_file, spec)
    assert bf16.retriever.encoder.dtype == "bfloat16"
    fp32 = load_linker(entities_file, {**spec, "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "float32"}})
    assert fp32.retriever.encoder.dtype == "float32"
    default = load_linker(entities_file, {**spec, "candidates": {"encoder": str(tiny_bert)}})
    from gen_linker.hardware import default_dtype
    assert default.retriever.encoder.dtype == default_dtype()     # the spec's default is auto
    a, b = bf16.link(mentions), fp32.link(mentions)
    assert [r.entity_id for r in a] == [r.entity_id for r in b]   # a 10-entity KB: no near ties to flip
    with pytest.raises(SpecError, match="encoder_dtype"):
        load_linker(entities_file, {**spec, "candidates": {"encoder_dtype": "float64"}})


def test_what_is_cached_is_float32_whatever_the_dtype(tiny_bert, tmp_path):
    """A cache means one thing whoever built it: a bf16 encoder stores (and reads) float32 rows."""
    full = SentenceEncoder(str(tiny_bert))
    half = SentenceEncoder(str(tiny_bert), dtype="bfloat16")
    cached = half.encode_cached(TEXTS, tmp_path)
    np.testing.assert_array_equal(cached, full.encode(TEXTS))
    np.testing.assert_array_equal(full.encode_cached(TEXTS, tmp_path), cached)     # the same file
    assert not np.array_equal(half.encode(TEXTS), cached)                          # mentions: bf16


def test_every_encoder_of_a_loaded_linker_follows_the_spec(entities_file, tiny_bert):
    """The retriever's encoder and the one of demonstrations / the pool's kNN are one encoder in
    the spec's dtype."""
    from gen_linker.kb import KnowledgeBase
    from gen_linker.loader import LinkerParts, read_spec

    spec = read_spec({"linker": "retrieval", "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "bfloat16"}})
    parts = LinkerParts(KnowledgeBase.from_jsonl(entities_file), spec)
    assert parts.similarity_encoder.dtype == "bfloat16"
    assert parts.retriever.encoder is parts.similarity_encoder


def test_dim_features_are_float32_whatever_the_encoder_dtype(tiny_bert, tmp_path):
    """DIM/DWE heads were trained on float32 features: a bf16 encoder shared with retrieval still
    gives them float32 rows, for short lists and for long (cached) ones alike."""
    from gen_linker.linkers.discriminative_features import CACHE_FROM, DiscriminativeFeaturizer

    half = SentenceEncoder(str(tiny_bert), dtype="bfloat16")
    featurizer = DiscriminativeFeaturizer(half, cache_dir=tmp_path)
    reference = SentenceEncoder(str(tiny_bert)).encode(TEXTS)
    np.testing.assert_array_equal(featurizer.encode(TEXTS).numpy(), reference)
    long = (TEXTS * (CACHE_FROM // len(TEXTS) + 1))[:CACHE_FROM]
    np.testing.assert_allclose(featurizer.encode(long).numpy()[: len(TEXTS)], reference, atol=1e-5)
