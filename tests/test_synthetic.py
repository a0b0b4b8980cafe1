"""The synthetic image benchmark: deterministic, loadable, and only the image tells entities apart."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

from synthetic_mel import COLORS, SHAPES, generate  # noqa: E402

from gen_linker import datasets  # noqa: E402
from gen_linker.kb import KnowledgeBase  # noqa: E402
from gen_linker.vision import VisionEncoder  # noqa: E402


def test_same_seed_same_benchmark(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert generate(a, groups=2, per_group=2, mentions=3, seed=5) == generate(b, groups=2, per_group=2, mentions=3, seed=5)
    for name in ("entities.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert sorted(p.read_bytes() for p in (a / "images").iterdir()) == sorted(p.read_bytes() for p in (b / "images").iterdir())


def test_groups_share_a_name_and_text_says_nothing_of_the_image(tmp_path):
    counts = generate(tmp_path, groups=3, per_group=3, mentions=5, seed=0)
    assert counts["entities"] == 9 and counts["train"] + counts["dev"] + counts["test"] == 45
    kb = KnowledgeBase.from_jsonl(tmp_path / "entities.jsonl")
    test = datasets.load(tmp_path / "test.jsonl")
    assert len(test.valid) == counts["test"] and not test.errors
    words = set(COLORS) | set(SHAPES)
    for m in test.valid:
        assert len(kb.lookup(m.mention)) == 3                  # the group: one surface name, 3 entities
        assert not words & set(m.text.lower().replace(",", " ").split())
        assert (tmp_path / m.image).exists()


def test_frozen_random_features_carry_the_entity(tmp_path):
    """A linear probe on a frozen, randomly initialised encoder's features tells a group's
    entities apart on held-out images (chance: 1/6): the signal a linear mapper can pass on."""
    generate(tmp_path, groups=2, per_group=3, mentions=10, seed=2)
    train = [m for split in ("train", "dev") for m in datasets.load(tmp_path / f"{split}.jsonl").valid]
    test = datasets.load(tmp_path / "test.jsonl").valid
    enc = VisionEncoder.from_config(seed=0)
    f_train, e_train = enc.encode_refs([m.image for m in train], root=tmp_path)
    f_test, e_test = enc.encode_refs([m.image for m in test], root=tmp_path)
    assert not any(e_train) and not any(e_test)
    x_train, x_test = np.stack(f_train), np.stack(f_test)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    labels = sorted({m.gold for m in train})
    y = np.array([[m.gold == label for label in labels] for m in train], dtype=float)
    w = np.linalg.solve(x_train.T @ x_train + np.eye(x_train.shape[1]), x_train.T @ y)   # ridge
    predicted = [labels[i] for i in (x_test @ w).argmax(1)]
    accuracy = np.mean([p == m.gold for p, m in zip(predicted, test)])
    assert accuracy >= 0.5, accuracy
