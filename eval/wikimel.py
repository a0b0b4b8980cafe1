"""Where the benchmarks read WikiMEL, and the seeded samples they share."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")

WIKIMEL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikimel"


def seeded_sample(items: Sequence[T], size: int | None, seed: int = 0) -> list[T]:
    """`size` items drawn with `random.Random(seed)` (the suites' sampling); all when `size` is
    0, None or not smaller. The generative suite's test sample is `seeded_sample(test, 1000)`."""
    return random.Random(seed).sample(list(items), size) if size and size < len(items) else list(items)


# WikiMEL train as the labelled pool / demonstration source of a linker spec's `generative` section
WIKIMEL_DEMOS = {"demos": str(WIKIMEL), "demos_format": "melbench", "demos_split": "train"}


def disjoint_fusion_data(dev_size: int = 1500, test_size: int = 1000):
    """What the fusion benchmarks fit and test on: WikiMEL's train/dev/test (as loaded datasets),
    the entity-disjoint split (20% of the gold entities new, seed 0), the recipes' seeded sample
    of its dev (`adapters/default.yaml`: 1,500) and the suites' seeded test sample."""
    from gen_linker import datasets
    from gen_linker.datasets.disjoint import entity_disjoint

    data = {s: datasets.load(WIKIMEL, "melbench", s) for s in ("train", "dev", "test")}
    split = entity_disjoint(data["train"].valid, data["dev"].valid, data["test"].valid, 0.2, 0)
    return data, split, random.Random(0).sample(split.dev, dev_size), seeded_sample(data["test"].valid, test_size)
