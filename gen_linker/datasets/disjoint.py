"""An entity-disjoint split: how well does a trained linker do on entities it never saw?

A user with a new KB needs a linker that generalises to entities absent from its training
data, perhaps helped by a handful of labelled examples. This split measures exactly that on
any dataset with train/dev/test splits, defined once and seeded:

- a share (default 20%) of all gold entities, drawn with `random.Random(seed)`, are **new**;
- `test_new`: the test mentions whose gold is new (what is measured);
- `train`, `dev`: the train / dev mentions whose gold is *not* new (all that training may see);
- `pool`: the train and dev mentions of new entities; the k labelled examples of a few-shot
  run are drawn from it (`shots`), never from test.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..schema import Mention
from .jsonl import write_mentions

NEW_SHARE = 0.2
SEED = 0


@dataclass
class DisjointSplit:
    new_entities: set[str]
    train: list[Mention]
    dev: list[Mention]
    test_new: list[Mention]
    pool: list[Mention]
    seed: int = SEED
    new_share: float = NEW_SHARE

    def shots(self, k: int, seed: int | None = None) -> list[Mention]:
        """k labelled examples of new entities from the pool (seeded; nested: the first 16 of
        the 64 are the 16)."""
        order = random.Random(self.seed if seed is None else seed).sample(self.pool, len(self.pool))
        return order[: max(0, k)]

    def counts(self) -> dict:
        return {"new_entities": len(self.new_entities), "train": len(self.train), "dev": len(self.dev),
                "test_new": len(self.test_new), "pool": len(self.pool), "seed": self.seed,
                "new_share": self.new_share}


def entity_disjoint(train: Sequence[Mention], dev: Sequence[Mention], test: Sequence[Mention],
                    new_share: float = NEW_SHARE, seed: int = SEED) -> DisjointSplit:
    """The split of the module docstring. Entities are drawn from the sorted gold ids of all
    three splits, so the same data and seed always give the same new entities."""
    golds = sorted({m.gold for m in (*train, *dev, *test) if m.gold is not None})
    new = set(random.Random(seed).sample(golds, round(new_share * len(golds))))
    return DisjointSplit(new_entities=new,
                         train=[m for m in train if m.gold is not None and m.gold not in new],
                         dev=[m for m in dev if m.gold is not None and m.gold not in new],
                         test_new=[m for m in test if m.gold in new],
                         pool=[m for m in (*train, *dev) if m.gold in new], seed=seed, new_share=new_share)


def write_split(split: DisjointSplit, folder: str | Path, shots: Sequence[int] = (16, 64, 256)) -> dict:
    """The split as JSONL files in `folder` (train, dev, test_new, pool, and for each K shots-K
    and train+shots-K, the labelled examples of a K-shot run)
    plus `split.json` with the counts; returns the counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    for name in ("train", "dev", "test_new", "pool"):
        write_mentions(getattr(split, name), folder / f"{name}.jsonl")
    for k in shots:
        examples = split.shots(k)
        write_mentions(examples, folder / f"shots-{k}.jsonl")
        write_mentions([*split.train, *examples], folder / f"train+shots-{k}.jsonl")     # a few-shot run's labelled pool
    counts = {**split.counts(), "shots": list(shots)}
    (folder / "split.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
