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
