"""Image soft prefixes in the generative linker's prompts, on the hf and vllm backends."""
import io

import numpy as np
import torch

from conftest import ENTITIES, TEST, TRAIN
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker
from gen_linker.mapper import LinearMapper
from gen_linker.prompting import PromptTemplate
from gen_linker.demonstrations import demonstration_pool, make_retriever
from gen_linker.schema import Entity, Mention
from gen_linker.soft_prompts import ImagePrefixer, block_token_starts
from gen_linker.vision import VisionEncoder

N_PREFIX = 2


def png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def mentions(rows, tmp_path, with_images=True):
    out = []
    for k, r in enumerate(rows):
        image = None
        if with_images:
            (tmp_path / f"{r['id']}.png").write_bytes(png(k))
            image = f"{r['id']}.png"
        out.append(Mention(r["id"], r["text"], r["mention"], gold=r.get("gold"), image=image))
    return out


def linker_for(backend, tmp_path, images=True):
    kb = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])
    pool = demonstration_pool(mentions(TRAIN, tmp_path, images), kb)
    torch.manual_seed(0)
    prefixer = ImagePrefixer(VisionEncoder.from_config(seed=0),
                             LinearMapper(64, backend.embed([1]).shape[-1], N_PREFIX), image_root=tmp_path)
    cfg = GenerativeConfig(num_demos=2, retriever="bm25", num_beams=3)
    return GenerativeLinker(kb, backend, make_retriever("bm25", pool), cfg, images=prefixer)


def test_block_starts_point_at_each_text_marker(hf_backend):
    template = PromptTemplate.load("gemel")
    from gen_linker.prompting import Demonstration

    blocks = template.blocks("Paris at night", "Paris", [Demonstration("A", "A", "Noel Harrison")])
    ids, starts = block_token_starts(hf_backend.tokenizer, blocks)
    assert ids == hf_backend.tokenizer("".join(blocks))["input_ids"]
    for s in starts[1:]:
        assert hf_backend.tokenizer.decode(ids[s:]).startswith("[Text]")


def test_prompts_get_n_prefix_vectors_per_image(hf_backend, tmp_path):
    queries = mentions(TEST[:2], tmp_path)
    text_only = [Mention(m.id, m.text, m.mention, gold=m.gold) for m in queries]
    with_images = linker_for(hf_backend, tmp_path).prompts(queries)
    without = linker_for(hf_backend, tmp_path, images=False).prompts(text_only)   # same demos, no images
    for emb, ids in zip(with_images, without):
        assert isinstance(emb, torch.Tensor) and isinstance(ids, list)
        assert emb.shape[0] == len(ids) + N_PREFIX * 3          # 2 demonstrations + the query
        text = hf_backend.embed(ids).float()
        # the first block starts the prompt: its image comes first, then "[Text]..."
        np.testing.assert_allclose(emb[N_PREFIX : N_PREFIX + 1].float(), text[:1])
        np.testing.assert_allclose(emb[-5:].float(), text[-5:])      # the query's end is text


def test_missing_image_links_without_it_and_is_reported(hf_backend, tmp_path):
    linker = linker_for(hf_backend, tmp_path)
    query = mentions(TEST[:1], tmp_path)[0]
    query = Mention(query.id, query.text, query.mention, gold=query.gold, image="nowhere.png")
    result = linker.link([query])[0]
    assert result.entity_id is not None
    assert "nowhere.png" in linker.images.errors
    assert "nowhere.png" in result.image_error and "nowhere.png" in result.to_dict()["image_error"]


def test_a_batch_with_bad_images_goes_on_and_counts_them(hf_backend, tmp_path):
    import json

    from gen_linker.batch import link_to_file

    linker = linker_for(hf_backend, tmp_path)
    queries = mentions(TEST, tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    bad = {queries[0].id: "gone.png", queries[1].id: "corrupt.png"}
    queries = [Mention(m.id, m.text, m.mention, gold=m.gold, image=bad.get(m.id, m.image)) for m in queries]
    summary = link_to_file(linker, queries, tmp_path / "out.jsonl", chunk_size=2, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [m.id for m in queries]
    assert summary.image_errors == 2 and summary.linked + summary.nil == len(queries)
    assert "gone.png" in lines[0]["image_error"] and "corrupt.png" in lines[1]["image_error"]
    assert all("image_error" not in r for r in lines[2:])
    assert "2 linked without their image" in summary.line()


def test_hf_and_vllm_give_the_same_beams_with_images(hf_backend, vllm_backend, tmp_path):
    queries = mentions(TEST, tmp_path)
    hf_linker = linker_for(hf_backend, tmp_path)
    prompts = hf_linker.prompts(queries)
    assert all(isinstance(p, torch.Tensor) for p in prompts)
    want = hf_backend.constrained_beam_search(prompts, hf_linker.trie, 3)
    got = vllm_backend.constrained_beam_search(prompts, hf_linker.trie, 3)
    for g, w in zip(got, want):
        assert [h.value for h in g] == [h.value for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-3)
