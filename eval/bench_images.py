"""Does the mapper learn to use images? The synthetic benchmark, with SmolLM2-135M frozen.

    python eval/bench_images.py [--groups 10] [--mentions 10] [--epochs 2] [--prefix 1,4,8]

Builds eval/runs/synthetic (eval/synthetic_mel.py: entities sharing a name in groups of 3, told
apart only by their images), then links its test split with: text only; images through an
untrained (random) mapper; images through a mapper trained on the train split (n_prefix 1/4/8).
Also reports training throughput and peak memory, and vision feature extraction with and
without the feature cache. Writes eval/results/images.md and .json.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from gen_linker import datasets, load_linker
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.generative import GenerativeLinker
from gen_linker.mapper import LinearMapper
from gen_linker.soft_prompts import ImagePrefixer
from gen_linker.training import TrainConfig, dev_top1, train_mapper
from gen_linker.vision import VisionEncoder
from machine import machine_line
from synthetic_mel import generate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--mentions", type=int, default=10, help="mentions per entity")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--prefix", default="1,4,8", help="n_prefix values to train")
    ap.add_argument("--num-demos", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    ap.add_argument("--name", default="images", help="results file stem (default images: images.md/.json)")
    args = ap.parse_args()

    bench = ROOT / "eval" / "runs" / "synthetic"
    shutil.rmtree(bench, ignore_errors=True)
    counts = generate(bench, groups=args.groups, per_group=3, mentions=args.mentions, seed=0)
    kb = KnowledgeBase.from_jsonl(bench / "entities.jsonl")
    train, dev, test = (datasets.load(bench / f"{s}.jsonl").valid for s in ("train", "dev", "test"))
    text_only = load_linker(kb, {"generative": {"demos": str(bench / "train.jsonl"), "num_demos": args.num_demos,
                                                "demo_retriever": "bm25", "beams": 3}})
    backend = text_only.backend

    # Vision feature extraction, cold then from the cache.
    encoder = VisionEncoder.from_config(seed=0)
    refs = [m.image for m in train + dev + test]
    cache = bench / "feature-cache"
    t0 = time.perf_counter()
    encoder.encode_refs(refs, bench, cache)
    cold = len(refs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    encoder.encode_refs(refs, bench, cache)
    warm = len(refs) / (time.perf_counter() - t0)

    def linker_with(mapper: LinearMapper | None) -> GenerativeLinker:
        return text_only.with_images(ImagePrefixer(encoder, mapper, bench, cache) if mapper is not None else None)

    hidden = int(backend.embed([0]).shape[-1])
    rows = []
    t0 = time.perf_counter()
    rows.append({"run": "text only", "n_prefix": 0, "top1": dev_top1(linker_with(None), test)})
    torch.manual_seed(0)
    rows.append({"run": "images, untrained mapper", "n_prefix": 4,
                 "top1": dev_top1(linker_with(LinearMapper(encoder.feature_dim, hidden, 4)), test)})
    print(rows, f"{time.perf_counter() - t0:.0f}s", flush=True)
    for n in [int(x) for x in args.prefix.split(",")]:
        torch.manual_seed(0)
        linker = linker_with(LinearMapper(encoder.feature_dim, hidden, n))
        t0 = time.perf_counter()
        report = train_mapper(linker, train, dev[: len(dev) // 2], TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=8),
                              progress=False)
        t_train = time.perf_counter() - t0
        rows.append({"run": "images, trained mapper", "n_prefix": n, "top1": dev_top1(linker, test),
                     "epoch_loss": report.epoch_loss, "dev_top1": report.dev_top1,
                     "train_examples_per_s": len(train) * args.epochs / t_train})
        print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"counts": counts, "rows": rows, "features_per_s_cold": cold, "features_per_s_cached": warm,
              "peak_rss_gb": peak, "dtype": backend.dtype}
    write(args, result)
    return 0


def write(args, r: dict) -> None:
    c = r["counts"]
    lines = ["# Images: does the trained mapper use them? (synthetic benchmark)", "",
             f"- command: `python eval/bench_images.py {' '.join(sys.argv[1:])}`", f"- machine: {machine_line()}",
             f"- date: {time.strftime('%Y-%m-%d')}",
             f"- eval/synthetic_mel.py, seed 0: {c['entities']} entities in {c['entities'] // 3} groups of 3 sharing a "
             f"name, images decide; {c['train']} train / {c['dev']} dev / {c['test']} test mentions (chance within a "
             f"group: 0.333). SmolLM2-135M-Instruct ({r['dtype']}) frozen, a frozen randomly initialised small CLIP "
             f"(64 px, 2 layers), {args.num_demos} BM25 demonstrations with their images, beam 3; mapper trained "
             f"{args.epochs} epochs, AdamW lr {args.lr:g}, 8 examples per step", "",
             "| run | n_prefix | test Top-1 | train loss per epoch | train examples/s |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        loss = " -> ".join(f"{x:.2f}" for x in row.get("epoch_loss", [])) or "-"
        speed = f"{row['train_examples_per_s']:.2f}" if "train_examples_per_s" in row else "-"
        lines.append(f"| {row['run']} | {row['n_prefix']} | {row['top1']:.3f} | {loss} | {speed} |")
    lines += ["", f"Peak memory of the whole run (max RSS): {r['peak_rss_gb']:.2f} GB.",
              f"Vision features: {r['features_per_s_cold']:.0f} images/s encoded, "
              f"{r['features_per_s_cached']:.0f} images/s from the cache (same images, second pass)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
