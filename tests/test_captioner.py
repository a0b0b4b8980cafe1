"""The BLIP-2-style captioner (a tiny random one built from configs here) writing DIM's expert
text: batching, bad images per mention, resume, and DIM reading the captions."""
import json

import numpy as np
import pytest

from conftest import write_jsonl


@pytest.fixture(scope="module")
def tiny_blip2(tiny_llm, tmp_path_factory):
    import torch
    from transformers import (AutoTokenizer, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              Blip2QFormerConfig, Blip2VisionConfig, BlipImageProcessorPil, LlamaConfig)

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id)
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 encoder_hidden_size=32)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("blip2")
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok,
                   num_query_tokens=4).save_pretrained(folder)
    return folder


def png(path, colour):
    from PIL import Image

    Image.new("RGB", (40, 40), colour).save(path)


def test_caption_writes_expert_text_reports_bad_images_and_resumes(tiny_blip2, tmp_path):
    from gen_linker.cli import main

    png(tmp_path / "red.png", (255, 0, 0))
    png(tmp_path / "blue.png", (0, 0, 255))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [{"id": "a", "text": "Paris at night", "mention": "Paris", "image": "red.png"},
            {"id": "b", "text": "Paris at noon", "mention": "Paris", "image": "blue.png"},
            {"id": "c", "text": "Paris again", "mention": "Paris", "image": "broken.png"},
            {"id": "d", "text": "Paris, no image", "mention": "Paris"}]
    mentions = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "captions.jsonl"
    args = ["caption", "--model", str(tiny_blip2), "--input", str(mentions), "--image-root", str(tmp_path),
            "--output", str(out), "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    caps = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["id"] for c in caps] == ["a", "b"]                     # c: bad image, d: none
    assert all(c["caption"].strip() and isinstance(c["answer"], str) for c in caps)

    # a kill mid-write leaves a torn line: the rerun cuts it and adds only what is missing
    text = out.read_text().splitlines()
    out.write_text(text[0] + "\n" + text[1][:10])
    assert main(args) == 0
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["id"] for c in again] == ["a", "b"] and again == caps   # greedy: same text


def test_captioner_batches_give_the_same_text_as_one_by_one(tiny_blip2):
    from PIL import Image

    from gen_linker.captioner import Captioner

    captioner = Captioner(tiny_blip2, max_new_tokens=6)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    together = captioner.describe(images)
    assert together == [captioner.describe([im])[0] for im in images]
    with pytest.raises(Exception, match="does not exist"):
        Captioner("/nowhere/blip2")


@pytest.mark.real_models     # the packaged MiniLM encodes the expert text
def test_dim_reads_the_captions_as_expert_features(tiny_blip2, tmp_path):
    import torch

    from gen_linker.annotations import read_captions
    from gen_linker.captioner import Captioner, caption_mentions
    from gen_linker.linkers.dim import DIMFeaturizer
    from gen_linker.schema import Mention

    png(tmp_path / "red.png", (255, 0, 0))
    mentions = [Mention("a", "Paris at night", "Paris", image="red.png"), Mention("b", "Paris", "Paris")]
    caption_mentions(Captioner(tiny_blip2, max_new_tokens=6), mentions, tmp_path / "c.jsonl", tmp_path,
                     progress=False)
    feats = DIMFeaturizer(captions=read_captions(tmp_path / "c.jsonl")).mentions(mentions)
    assert feats.expert_mask.tolist() == [True, False]
    assert torch.count_nonzero(feats.expert[0]) > 0 and torch.count_nonzero(feats.expert[1]) == 0
