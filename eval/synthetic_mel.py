"""A synthetic multimodal entity-linking benchmark where only the image can decide.

    python eval/synthetic_mel.py OUT_DIR [--groups 20] [--per-group 3] [--mentions 8] [--seed 0]

Entities come in groups that share a surface name: "Varen (red circle)", "Varen (blue
square)", ... Each entity's images show its shape in its colour (position, size, background and
noise vary); mention sentences name only the group ("Varen at the 2010 opening"), so text alone
cannot tell a group's entities apart and a linker does no better than chance within a group
unless it reads the image. WikiMEL ships without images here; this is the benchmark that shows
whether the mapper learns to use them.

Writes OUT_DIR/entities.jsonl, train.jsonl, dev.jsonl, test.jsonl (gen-linker JSONL; images as
paths relative to OUT_DIR) and OUT_DIR/images/*.png. Deterministic for a seed.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40),
          "purple": (140, 50, 170), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
SYLLABLES = ("va", "ren", "to", "mi", "ka", "lor", "su", "den", "ri", "an", "bel", "os", "tra", "ne", "quil", "do")
SENTENCES = ("{m} at the {y} opening", "A photo of {m} taken in {y}", "{m}, pictured in {y}",
             "{m} during the {y} season", "Archive picture: {m} ({y})", "{m} seen from the street in {y}")


def group_names(n: int, rng: random.Random) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


def draw(color: str, shape: str, rng: random.Random, size: int = 64):
    """The entity's shape in its colour at a random place and size, on a random grey, with noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg = rng.randint(90, 170)
    im = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(im)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    noise = np.random.default_rng(rng.randint(0, 2**31)).integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def generate(out: str | Path, groups: int = 20, per_group: int = 3, mentions: int = 8, seed: int = 0,
             image_size: int = 64, split: tuple[float, float] = (0.6, 0.2)) -> dict[str, int]:
    """Write the benchmark to `out`; returns counts. Each entity has `mentions` mentions, split
    train/dev/test by `split` (the rest is test), so every entity is seen in training."""
    rng = random.Random(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    looks = [(c, s) for c in COLORS for s in SHAPES]
    if per_group > len(looks):
        raise ValueError(f"per_group must be at most {len(looks)}")
    entities, rows = [], {"train": [], "dev": [], "test": []}
    for g, base in enumerate(group_names(groups, rng)):
        for k, (color, shape) in enumerate(rng.sample(looks, per_group)):
            eid = f"S{g}-{k}"
            entities.append({"id": eid, "name": f"{base} ({color} {shape})", "aliases": [base],
                             "description": f"the {color} {shape} called {base}"})
            n_train, n_dev = round(mentions * split[0]), round(mentions * split[1])
            for j in range(mentions):
                image = f"images/{eid}-{j}.png"
                draw(color, shape, rng, image_size).save(out / image)
                text = rng.choice(SENTENCES).format(m=base, y=rng.randint(1950, 2020))
                part = "train" if j < n_train else "dev" if j < n_train + n_dev else "test"
                rows[part].append({"id": f"{eid}-{j}", "text": text, "mention": base, "gold": eid, "image": image})
    _write(out / "entities.jsonl", entities)
    for part, items in rows.items():
        rng.shuffle(items)
        _write(out / f"{part}.jsonl", items)
    return {"entities": len(entities), **{k: len(v) for k, v in rows.items()}}


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--per-group", type=int, default=3)
    ap.add_argument("--mentions", type=int, default=8, help="mentions (and images) per entity")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = generate(args.out, args.groups, args.per_group, args.mentions, args.seed, args.image_size)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
