"""Does DWE learn to use images? The synthetic benchmark, DWE with and without images.

    python eval/bench_dwe_images.py [--groups 10] [--mentions 20] [--epochs 30] [--lr 3e-3] [--seeds 0,1,2]

Builds eval/runs/synthetic_dwe (eval/synthetic_mel.py: entities sharing a name in groups of 3,
told apart only by their images; chance within a group 0.333), then trains DWE on its train
split (the packaged MiniLM for text, a frozen randomly initialised small CLIP for images) and
links its test split: text only; the whole image only (`--grid 0`); the whole image and a 2x2
grid of crops (the default when no regions file is given). DIM, text only and with images, is
trained the same way for reference. Each row is the mean over the seeds (model initialisation
and batch order), with each seed's Top-1. Writes eval/results/dwe_images.md and .json.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

from gen_linker import datasets, load_linker
from gen_linker.evaluation import top1
from gen_linker.discriminative_training import DiscriminativeTrainConfig, train_discriminative
from gen_linker.hardware import machine_line
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.discriminative import linker_class
from gen_linker.linkers.discriminative_features import DiscriminativeFeaturizer
from gen_linker.vision import VisionEncoder
from synthetic_mel import generate

ROOT = Path(__file__).resolve().parent.parent
RUNS = [("DWE", "dwe", "text only", None), ("DWE", "dwe", "whole image", 0),
        ("DWE", "dwe", "image + 2x2 grid crops", 2), ("DIM", "dim", "text only", None),
        ("DIM", "dim", "whole image", 0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--mentions", type=int, default=20, help="mentions per entity (12 train, 4 dev, 4 test)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (the data is always seed 0)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    ap.add_argument("--name", default="dwe_images", help="results file stem")
    args = ap.parse_args()

    bench = ROOT / "eval" / "runs" / "synthetic_dwe"
    shutil.rmtree(bench, ignore_errors=True)
    counts = generate(bench, groups=args.groups, per_group=3, mentions=args.mentions, seed=0)
    kb = KnowledgeBase.from_jsonl(bench / "entities.jsonl")
    train, dev, test = (datasets.load(bench / f"{s}.jsonl").valid for s in ("train", "dev", "test"))
    vision = VisionEncoder.from_config(seed=0)
    bm25 = load_linker(kb, {"linker": "bm25"}).link(test)     # the baseline, on the same test mentions
    base = top1(bm25, test)
    rows = [{"model": "BM25 over names", "inputs": "text only", "top1": base, "top1_per_seed": [base], "train_s": 0.0}]
    for model_name, arch, inputs, grid in RUNS:
        top1s, seconds = [], []
        for seed in [int(s) for s in args.seeds.split(",")]:
            featurizer = DiscriminativeFeaturizer(None, vision if grid is not None else None, bench,
                                                  cache_dir=bench / "cache", grid=grid or 0)
            config = DiscriminativeTrainConfig(arch=arch, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                               hard_negatives=4, dim=64, heads=2, dropout=0.1, seed=seed)
            t0 = time.perf_counter()
            folder = bench / "models" / f"{arch}-{grid}-{seed}"   # the best dev epoch is kept there
            model, report = train_discriminative(kb, train, dev, featurizer, config, folder, progress=False)
            seconds.append(time.perf_counter() - t0)
            linker = linker_class(arch)(kb, model, featurizer, num_candidates=3 * args.groups, top_k=3)
            results = linker.link(test)
            top1s.append(top1(results, test))
        rows.append({"model": model_name, "inputs": inputs, "top1": sum(top1s) / len(top1s), "top1_per_seed": top1s,
                     "train_s": sum(seconds) / len(seconds)})
        print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    write(args, {"counts": counts, "rows": rows, "peak_rss_gb": peak})
    return 0


def write(args, r: dict) -> None:
    c = r["counts"]
    lines = ["# Images: does DWE use them? (synthetic benchmark)", "",
             f"- command: `python eval/bench_dwe_images.py {' '.join(sys.argv[1:])}`", f"- machine: {machine_line()}",
             f"- date: {time.strftime('%Y-%m-%d')}",
             f"- eval/synthetic_mel.py, seed 0: {c['entities']} entities in {c['entities'] // 3} groups of 3 sharing a "
             f"name, images decide; {c['train']} train / {c['dev']} dev / {c['test']} test mentions (chance within a "
             f"group: 0.333). Text: the packaged MiniLM (frozen); images: a frozen randomly initialised small CLIP "
             f"(64 px, 2 layers). Trained {args.epochs} epochs, AdamW lr {args.lr:g}, batch {args.batch_size}, "
             f"4 hard negatives, hidden 64, 2 heads, dropout 0.1; best epoch on dev; seeds {args.seeds}", "",
             "| model | inputs | test Top-1 (mean) | per seed | train s (mean) |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        seeds = " / ".join(f"{x:.3f}" for x in row["top1_per_seed"])
        lines.append(f"| {row['model']} | {row['inputs']} | {row['top1']:.3f} | {seeds} | {row['train_s']:.1f} |")
    lines += ["", f"Peak memory of the whole run (max RSS): {r['peak_rss_gb']:.2f} GB."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
