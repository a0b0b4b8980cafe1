"""Mapper training on the tiny model and a tiny synthetic image benchmark."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

from synthetic_mel import generate  # noqa: E402

from gen_linker import datasets  # noqa: E402
from gen_linker.kb import KnowledgeBase  # noqa: E402
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker  # noqa: E402
from gen_linker.mapper import LinearMapper  # noqa: E402
from gen_linker.demonstrations import demonstration_pool, make_retriever  # noqa: E402
from gen_linker.soft_prompts import ImagePrefixer  # noqa: E402
from gen_linker.training import TrainConfig, train_mapper  # noqa: E402
from gen_linker.vision import VisionEncoder  # noqa: E402


def setup(hf_backend, root):
    generate(root, groups=2, per_group=2, mentions=5, seed=0)
    kb = KnowledgeBase.from_jsonl(root / "entities.jsonl")
    train = datasets.load(root / "train.jsonl").valid
    dev = datasets.load(root / "dev.jsonl").valid
    torch.manual_seed(0)
    images = ImagePrefixer(VisionEncoder.from_config(seed=0), LinearMapper(64, hf_backend.embed([1]).shape[-1], 2),
                           image_root=root, cache_dir=root / "cache")
    linker = GenerativeLinker(kb, hf_backend, make_retriever("bm25", demonstration_pool(train, kb)),
                              GenerativeConfig(num_demos=2, retriever="bm25", num_beams=2), images=images)
    return linker, train, dev


def test_training_reduces_the_loss_and_resumes(hf_backend, tmp_path):
    linker, train, dev = setup(hf_backend, tmp_path / "bench")
    before = {k: v.clone() for k, v in linker.images.mapper.state_dict().items()}
    out = tmp_path / "run"
    first = train_mapper(linker, train, dev, TrainConfig(epochs=2, lr=0.01, batch_size=2), out, progress=False)
    assert len(first.epoch_loss) == 2 and len(first.dev_top1) == 2
    assert (out / "best" / "mapper.safetensors").exists()
    # a second call with more epochs resumes after the two finished ones
    resumed = train_mapper(linker, train, dev, TrainConfig(epochs=4, lr=0.01, batch_size=2), out, progress=False)
    assert resumed.epoch_loss[:2] == first.epoch_loss and len(resumed.epoch_loss) == 4
    assert resumed.epoch_loss[-1] < resumed.epoch_loss[0]
    after = linker.images.mapper.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in hf_backend.model.parameters())   # the LLM stayed frozen


def tiny_recipe(tmp_path, tiny_llm, **overrides) -> Path:
    """A small synthetic benchmark in tmp_path/bench and a recipe training on it into tmp_path/adapter."""
    import yaml

    generate(tmp_path / "bench", groups=2, per_group=2, mentions=5, seed=0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"kb": "bench/entities.jsonl", "train": "bench/train.jsonl",
                                      "dev": "bench/dev.jsonl", "image_root": "bench", "llm": str(tiny_llm),
                                      "dtype": "float32", "n_prefix": 2, "num_demos": 2, "epochs": 1, "lr": 0.01,
                                      "batch_size": 2, "output": "adapter", **overrides}))
    return recipe


def test_cli_train_then_link_with_the_adapter_on_both_backends(tiny_llm, vllm_backend, tmp_path):
    import json

    import yaml

    from gen_linker.adapters import load_adapter
    from gen_linker.cli import main

    bench = tmp_path / "bench"
    recipe = tiny_recipe(tmp_path, tiny_llm)
    assert main(["train", "--recipe", str(recipe), "--no-progress"]) == 0
    card = yaml.safe_load((tmp_path / "adapter" / "adapter.yaml").read_text())
    assert card["n_prefix"] == 2 and card["base_llm"] == str(tiny_llm) and len(card["dev_top1"]) == 1
    images, _ = load_adapter(tmp_path / "adapter")
    again, _ = load_adapter(tmp_path / "adapter")
    feats = torch.randn(3, images.mapper.feature_dim)
    assert torch.equal(images.mapper(feats), again.mapper(feats))       # save/load round trip

    common = ["link", "--linker", "generative", "--kb", str(bench / "entities.jsonl"), "--input", str(bench / "test.jsonl"),
              "--adapter", str(tmp_path / "adapter"), "--image-root", str(bench), "--dtype", "float32",
              "--beams", "2", "--no-progress"]
    assert main(common + ["--output", str(tmp_path / "hf.jsonl")]) == 0
    assert main(common + ["--output", str(tmp_path / "vllm.jsonl"), "--backend", "vllm", "--kv-cache-gb", "0.125"]) == 0
    hf_rows = [json.loads(x) for x in (tmp_path / "hf.jsonl").open()]
    vllm_rows = [json.loads(x) for x in (tmp_path / "vllm.jsonl").open()]
    assert [r["entity_id"] for r in hf_rows] == [r["entity_id"] for r in vllm_rows]
    assert all(r["entity_id"] is not None for r in hf_rows)


def test_recipe_errors_name_the_problem(tmp_path):
    import pytest
    import yaml

    from gen_linker.adapters import load_adapter, load_recipe
    from gen_linker.errors import GenLinkerError

    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"train": "t.jsonl"}))
    with pytest.raises(GenLinkerError, match="lacks kb"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"kb": "k", "train": "t", "epoch": 3}))
    with pytest.raises(GenLinkerError, match="unknown keys: epoch"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"kb": "k", "train": "t", "lora": {"rank": 4}}))
    with pytest.raises(GenLinkerError, match="lora has unknown keys: rank"):
        load_recipe(bad)
    ok = tmp_path / "sub" / "ok.yaml"
    ok.parent.mkdir()
    ok.write_text(yaml.safe_dump({"kb": "k.jsonl", "train": "t.jsonl"}))
    recipe = load_recipe(ok)
    assert recipe["kb"] == str(ok.parent / "k.jsonl") and recipe["n_prefix"] == 4 and recipe["output"] == str(ok.parent / "ok")
    with pytest.raises(GenLinkerError, match="not an adapter folder"):
        load_adapter(tmp_path)


def test_lora_adapter_trains_saves_as_peft_and_links_the_same_on_hf_and_vllm(tiny_llm, vllm_backend, tmp_path):
    import json

    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gen_linker.adapters import load_adapter, lora_folder
    from gen_linker.backends import load_backend
    from gen_linker.cli import main
    from gen_linker.lora import load_lora

    bench = tmp_path / "bench"
    recipe = tiny_recipe(tmp_path, tiny_llm, epochs=2, lora={"r": 4, "alpha": 8})
    assert main(["train", "--recipe", str(recipe), "--no-progress"]) == 0
    folder = tmp_path / "adapter"
    images, card = load_adapter(folder)
    assert card["lora"]["r"] == 4 and lora_folder(folder, card) == str(folder / "lora")

    # The LoRA moved off its zero start, and peft reads the folder as a standard adapter.
    ids = torch.tensor([[1, 5, 9, 30, 40, 41, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32)
    plain = base(ids).logits
    ours = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32)
    load_lora(ours, folder / "lora")
    theirs = PeftModel.from_pretrained(base, folder / "lora")
    assert (ours(ids).logits - plain).abs().max() > 1e-4
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=1e-4)

    # The same beams on hf and on vLLM (vLLM's LoRA support), prompts with image prefixes.
    from gen_linker.kb import KnowledgeBase
    from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker
    from gen_linker.demonstrations import demonstration_pool, make_retriever
    from gen_linker import datasets

    kb = KnowledgeBase.from_jsonl(bench / "entities.jsonl")
    images.image_root = bench
    hf = load_backend("hf", str(tiny_llm), dtype="float32", lora=str(folder / "lora"))
    pool = demonstration_pool(datasets.load(bench / "train.jsonl").valid, kb)
    linker = GenerativeLinker(kb, hf, make_retriever("bm25", pool), GenerativeConfig(num_demos=2, retriever="bm25"),
                              images=images)
    prompts = linker.prompts(datasets.load(bench / "test.jsonl").valid)
    with load_backend("vllm", str(tiny_llm), dtype="float32", kv_cache_gb=0.125, lora=str(folder / "lora")) as vllm:
        got = vllm.constrained_beam_search(prompts, linker.trie, 3)
    want = hf.constrained_beam_search(prompts, linker.trie, 3)
    for g, w in zip(got, want):
        assert [h.value for h in g] == [h.value for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-3)

    # Through the CLI: the adapter's LoRA is loaded by both backends.
    common = ["link", "--linker", "generative", "--kb", str(bench / "entities.jsonl"), "--input", str(bench / "test.jsonl"),
              "--adapter", str(folder), "--image-root", str(bench), "--dtype", "float32", "--beams", "2",
              "--no-progress"]
    assert main(common + ["--output", str(tmp_path / "hf.jsonl")]) == 0
    assert main(common + ["--output", str(tmp_path / "vllm.jsonl"), "--backend", "vllm", "--kv-cache-gb", "0.125"]) == 0
    rows = [[json.loads(x)["entity_id"] for x in (tmp_path / f).open()] for f in ("hf.jsonl", "vllm.jsonl")]
    assert rows[0] == rows[1] and all(rows[0])


@pytest.mark.real_models
def test_trained_mapper_links_better_with_images_than_text_only(tmp_path):
    """The issue's proof on a small instance: 2 names shared by 3 entities each, only the image
    tells them apart; SmolLM2 frozen, a frozen random CLIP, no demonstrations (short prompts)."""
    from gen_linker.backends import load_backend
    from gen_linker.training import dev_top1

    root = tmp_path / "bench"
    generate(root, groups=2, per_group=3, mentions=10, seed=0)
    kb = KnowledgeBase.from_jsonl(root / "entities.jsonl")
    train = datasets.load(root / "train.jsonl").valid
    test = datasets.load(root / "test.jsonl").valid
    # float32 whatever the machine: what the mapper learns must not depend on the processor's bf16
    # kernels (AMX, AVX512-BF16 alone and emulation round differently; issue 12)
    backend = load_backend("hf", None, dtype="float32")
    config = GenerativeConfig(num_demos=0, retriever="none", num_beams=3)
    text_only = GenerativeLinker(kb, backend, make_retriever("none", []), config)
    torch.manual_seed(0)
    images = ImagePrefixer(VisionEncoder.from_config(seed=0), LinearMapper(64, backend.embed([1]).shape[-1], 2),
                           image_root=root, cache_dir=root / "cache")
    linker = GenerativeLinker(kb, backend, make_retriever("none", []), config, images=images)
    train_mapper(linker, train, [], TrainConfig(epochs=5, lr=0.02, batch_size=4), progress=False)
    without, with_images = dev_top1(text_only, test), dev_top1(linker, test)
    assert without <= 0.34                      # the text cannot tell a group's entities apart
    assert with_images >= without + 0.25, (without, with_images)
