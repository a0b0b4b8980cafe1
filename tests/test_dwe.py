"""DWE: shapes with and without images, the loss falling, save/load, a corrupt image, image
crops (regions side file and grid), DIM/DWE cards, and a comparison suite with bm25 / dim / dwe
runs end to end on the toy KB (the packaged MiniLM as text encoder, a frozen random CLIP)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker import datasets
from gen_linker.discriminative_training import DiscriminativeTrainConfig, batch_loss, train_discriminative
from gen_linker.errors import GenLinkerError
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.discriminative import DiscriminativeLinker, DiscriminativeModel
from gen_linker.linkers.discriminative_features import DiscriminativeFeaturizer, MentionFeatures, context_texts
from gen_linker.linkers.dim import DIMConfig, DIMLinker, DIMModel
from gen_linker.linkers.dwe import DWEConfig, DWELinker, DWEModel
from gen_linker.schema import Entity, Mention
from gen_linker.spec import LinkerSpec, SpecError
from gen_linker.vision import VisionEncoder, grid_boxes, read_regions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from synthetic_mel import generate  # noqa: E402

pytestmark = pytest.mark.real_models   # the packaged MiniLM

SMALL = dict(arch="dwe", epochs=30, lr=3e-3, batch_size=16, hard_negatives=4, dim=64, heads=2, dropout=0.1)


def toy_kb() -> KnowledgeBase:
    return KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


def test_forward_shapes_with_without_and_with_some_images():
    torch.manual_seed(0)
    model = DWEModel(DWEConfig(text_dim=12, image_dim=6, hidden=16, heads=2)).eval()
    b = 5
    text_only = MentionFeatures(mention=torch.randn(b, 12), context=torch.randn(b, 4, 12),
                                context_mask=torch.tensor([[True, True, False, True]] * b))
    q = model.query(text_only)
    assert q.shape == (b, 12)                                      # in the entity features' space
    assert model.query(MentionFeatures(mention=text_only.mention)).shape == (b, 12)   # no context either
    has = torch.tensor([True, False, True, True, False])
    crops = torch.randn(b, 3, 6)
    crop_mask = torch.tensor([[True, True, False], [False] * 3, [True] * 3, [False] * 3, [False] * 3])
    mixed = MentionFeatures(mention=text_only.mention, context=text_only.context, context_mask=text_only.context_mask,
                            image=torch.randn(b, 6), image_mask=has, crops=crops, crop_mask=crop_mask)
    q2 = model.query(mixed)
    assert q2.shape == (b, 12) and torch.isfinite(q2).all()
    # rows without an image are the text-only rows, whatever the padding holds
    assert torch.allclose(q2[~has], q[~has], atol=1e-6) and not torch.allclose(q2[has], q[has])
    noisy = MentionFeatures(**{**mixed.__dict__, "image": mixed.image + 100 * (~has)[:, None],
                               "crops": crops + 50 * (~crop_mask)[..., None]})
    assert torch.allclose(model.query(noisy), q2, atol=1e-5)     # masked keys are ignored
    # a row whose image has no crop (regions entry without a box) still reads the whole image
    assert not torch.allclose(q2[3], q[3])
    # training: N-pair + the InfoNCE terms; every parameter gets a gradient when images are there
    model.train()
    e = model.entities(torch.randn(7, 12))
    assert e.shape == (7, 12) and model.scores(q2, e).shape == (b, 7)
    loss = batch_loss(model, mixed, torch.randn(7, 12), torch.tensor([0, 1, 1, 3, 4]),
                      torch.tensor([[2, 5], [6, -1], [0, 2], [-1, -1], [1, 4]]))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in model.parameters())
    assert tuple(DWEModel.views) == ("mention", "context", "image", "crops")


def test_loss_falls_on_a_tiny_set_and_training_resumes(tmp_path):
    kb = toy_kb()
    train = [Mention.from_dict(r) for r in TRAIN + TEST]
    featurizer = DiscriminativeFeaturizer()
    config = DiscriminativeTrainConfig(**{**SMALL, "epochs": 12, "batch_size": 4})
    model, report = train_discriminative(kb, train, train, featurizer, config, tmp_path / "run", progress=False)
    assert isinstance(model, DWEModel)
    assert report.epoch_loss[-1] < 0.5 * report.epoch_loss[0], report.epoch_loss
    assert report.dev_top1[report.best_epoch] >= 0.8
    # a DIM run cannot resume a DWE checkpoint: a clear error, not a silent restart
    with pytest.raises(GenLinkerError, match="cannot resume"):
        train_discriminative(kb, train, [], featurizer, DiscriminativeTrainConfig(epochs=13), tmp_path / "run",
                             progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic benchmark (entities of a group share a name, only images tell them
    apart) and DWE trained on it text-only and with images + 2x2 grid crops."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, groups=4, per_group=3, mentions=20, seed=0)   # 12 training mentions per entity
    kb = KnowledgeBase.from_jsonl(root / "entities.jsonl")
    train, dev, test = (datasets.load(root / f"{s}.jsonl").valid for s in ("train", "dev", "test"))
    out = {"root": root, "kb": kb, "test": test}
    for name, vision in (("text", None), ("images", VisionEncoder.from_config(seed=0))):
        featurizer = DiscriminativeFeaturizer(None, vision, root, cache_dir=root / "cache", grid=2)
        model, report = train_discriminative(kb, train, dev, featurizer, DiscriminativeTrainConfig(**SMALL),
                                             progress=False)
        out[name] = (model, featurizer, report)
    return out


def test_images_help_and_a_saved_dwe_gives_identical_scores(synthetic, tmp_path):
    kb, test, root = synthetic["kb"], synthetic["test"], synthetic["root"]
    top1 = {}
    for name in ("text", "images"):
        model, featurizer, report = synthetic[name]
        assert report.epoch_loss[-1] < report.epoch_loss[0]
        results = DWELinker(kb, model, featurizer, num_candidates=12, top_k=3).link(test)
        assert all(r.linker == "dwe" for r in results)
        top1[name] = sum(r.entity_id == m.gold for r, m in zip(results, test)) / len(test)
    assert top1["text"] <= 0.45 and top1["images"] >= top1["text"] + 0.25, top1

    model, featurizer, _ = synthetic["images"]
    model.save(tmp_path / "dwe", {"vision": "random:0", "text_encoder": None, "crops": {"grid": 2}})
    assert yaml.safe_load((tmp_path / "dwe" / "dim.yaml").read_text())["arch"] == "dwe"
    linker = DWELinker(kb, model, featurizer, num_candidates=12, top_k=12)
    again = DiscriminativeLinker.from_pretrained(tmp_path / "dwe", kb, image_root=root, num_candidates=12, top_k=12)
    assert type(again) is DWELinker and isinstance(again.model, DWEModel)
    a, b = linker.link(test), again.link(test)
    assert [[(c.entity_id, c.score) for c in r.candidates] for r in a] == \
           [[(c.entity_id, c.score) for c in r.candidates] for r in b]
    with pytest.raises(GenLinkerError, match="holds a trained DWE"):
        DIMLinker.from_pretrained(tmp_path / "dwe", kb)


def test_corrupt_image_gives_image_error_and_the_mention_is_still_linked(synthetic, tmp_path):
    kb, root = synthetic["kb"], synthetic["root"]
    model, featurizer, _ = synthetic["images"]
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = synthetic["test"][0]
    mentions = [good,
                Mention("bad", good.text, good.mention, image="images/corrupt.png"),
                Mention("gone", good.text, good.mention, image="images/missing.png"),
                Mention("none", good.text, good.mention)]
    results = DWELinker(kb, model, featurizer, num_candidates=12, top_k=3).link(mentions)
    assert [r.mention_id for r in results] == ["%s" % good.id, "bad", "gone", "none"]
    assert results[0].image_error is None and results[3].image_error is None
    assert "corrupt" in results[1].image_error and "cannot be read" in results[2].image_error
    assert all(r.entity_id in kb and r.candidates for r in results)          # linked on text
    # the broken images are linked exactly as the mention without an image
    assert [c.entity_id for c in results[1].candidates] == [c.entity_id for c in results[3].candidates]
    assert json.loads(json.dumps(results[1].to_dict()))["image_error"] == results[1].image_error


def test_crops_from_a_regions_file_else_a_grid(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 30), (10, 10, 200)).save(tmp_path / "b.png")
    regions = write_jsonl(tmp_path / "regions.jsonl", [
        {"image": "a.png", "boxes": [[0, 0, 10, 10], [5, 5, 60, 60], [50, 50, 70, 70]]},   # clamped; dropped
        {"image": "c.png", "boxes": [[3, 3, 1, 9]]},                                         # empty box: reported
        "not json", {"image": "d.png"}])
    boxes = read_regions(regions)
    assert list(boxes) == ["a.png"] and len(boxes["a.png"]) == 3
    with pytest.raises(GenLinkerError, match="does not exist"):
        read_regions(tmp_path / "nope.jsonl")
    assert grid_boxes(40, 20, 2) == [(0, 0, 20, 10), (20, 0, 40, 10), (0, 10, 20, 20), (20, 10, 40, 20)]
    enc = VisionEncoder.from_config(seed=0)
    feats, errors = enc.encode_crops(["a.png", "b.png", "zzz.png"], tmp_path, tmp_path / "cache", boxes, grid=3)
    assert feats[0].shape == (2, enc.feature_dim) and feats[1].shape == (9, enc.feature_dim)
    assert feats[2] is None and errors[2] is not None and errors[0] is None
    again, _ = enc.encode_crops(["a.png", "b.png"], tmp_path, tmp_path / "cache", boxes, grid=3)
    before = enc.n_encoded
    again2, _ = enc.encode_crops(["a.png", "b.png"], tmp_path, tmp_path / "cache", boxes, grid=3)
    assert enc.n_encoded == before and all(np.array_equal(x, y) for x, y in zip(again, again2))   # from the cache
    m = [Mention("1", "Red at the 2010 opening", "Red", image="a.png"), Mention("2", "x Blue y", "Blue", image="b.png"),
         Mention("3", "no image", "image")]
    f = DiscriminativeFeaturizer(None, enc, tmp_path, regions=boxes, grid=3).mentions(m, DWEModel.views)
    assert f.crops.shape == (3, 9, enc.feature_dim) and f.crop_mask.sum(1).tolist() == [2, 9, 0]
    assert f.image_mask.tolist() == [True, True, False] and f.context.shape == (3, 4, f.mention.shape[1])
    assert context_texts(m[1])[2:] == ["x", "y"] and f.context_mask[0].tolist() == [True, True, False, True]


def test_cards_decide_the_arch_and_old_dim_folders_load(tmp_path):
    kb = toy_kb()
    torch.manual_seed(0)
    DIMModel(DIMConfig(text_dim=384, dim=32, heads=2)).save(tmp_path / "dim", {"text_encoder": None})
    card = yaml.safe_load((tmp_path / "dim" / "dim.yaml").read_text())
    assert card["arch"] == "dim"
    del card["arch"]                                                   # a folder written before DWE
    (tmp_path / "dim" / "dim.yaml").write_text(yaml.safe_dump(card))
    model, _ = DiscriminativeModel.load(tmp_path / "dim")
    assert isinstance(model, DIMModel)
    assert type(DiscriminativeLinker.from_pretrained(tmp_path / "dim", kb)) is DIMLinker
    DWEModel(DWEConfig(hidden=32, heads=2)).save(tmp_path / "dwe")
    from gen_linker.loader import check_spec

    for linker, folder in (("dim", "dim"), ("dwe", "dwe"), ("pipeline", "dwe")):
        check_spec(LinkerSpec.from_dict({"linker": linker, "dim": {"folder": str(tmp_path / folder)}}))
    with pytest.raises(SpecError, match="holds a trained DWE.*use linker 'dwe'"):
        check_spec(LinkerSpec.from_dict({"linker": "dim", "dim": {"folder": str(tmp_path / "dwe")}}))
    with pytest.raises(SpecError, match="needs dim.folder"):
        check_spec(LinkerSpec.from_dict({"linker": "dwe"}))


def test_a_suite_with_bm25_dim_and_dwe_runs_end_to_end(tmp_path):
    """The suite format of eval/suites/generative_vs_discriminative.yaml on the toy KB: prepare
    steps train DIM and DWE (train-dim, train-discriminative --arch dwe), then three runs."""
    from gen_linker.compare import compare

    write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    write_jsonl(tmp_path / "train.jsonl", TRAIN + TEST)
    write_jsonl(tmp_path / "test.jsonl", TEST)
    train = ["--kb", "kb.jsonl", "--train", "train.jsonl", "--epochs", "8", "--batch-size", "4"]
    suite = {"name": "tiny_gen_vs_disc", "root": ".", "dataset": {"path": "test.jsonl", "format": "jsonl"},
             "kb": "kb.jsonl", "sample": {"size": 4, "seed": 0},
             "prepare": [{"creates": "models/dim", "run": ["train-dim", *train, "--output", "models/dim"]},
                         {"creates": "models/dwe", "run": ["train-discriminative", "--arch", "dwe", *train,
                                                           "--output", "models/dwe"]}],
             "runs": [{"name": "bm25", "linker": "bm25"},
                      {"name": "dim", "linker": "dim", "dim": {"folder": "models/dim"}},
                      {"name": "dwe", "linker": "dwe", "dim": {"folder": "models/dwe"}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    md = compare(path, progress=False)
    assert md == tmp_path / "eval" / "results" / "tiny_gen_vs_disc.md"
    table = json.loads(md.with_suffix(".json").read_text())
    assert [r["run"] for r in table["rows"]] == ["bm25", "dim", "dwe"]
    assert [r["linker"] for r in table["rows"]] == ["bm25", "dim", "dwe"]
    assert all(0 <= r["top1"] <= 1 and r["mentions_per_s"] and r["peak_rss_gb"] for r in table["rows"])
    assert {(p["a"], p["b"]) for p in table["pairs"]} == {("bm25", "dim"), ("bm25", "dwe"), ("dim", "dwe")}
    card = yaml.safe_load((tmp_path / "models" / "dwe" / "dim.yaml").read_text())
    assert card["arch"] == "dwe" and card["train_seconds"] > 0 and card["training"]["batch_size"] == 4
    out = tmp_path / "eval" / "runs" / "tiny_gen_vs_disc" / "dwe.jsonl"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["linker"] == "dwe" and r["entity_id"] in {e["id"] for e in ENTITIES} for r in rows)
    assert "| dwe | dwe |" in md.read_text()
