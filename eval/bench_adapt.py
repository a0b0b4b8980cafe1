"""`gen-linker adapt` on the entity-disjoint WikiMEL split: its wall time and held-out Top-1 per
k (0, 16, 64, 256 examples, with and without --tune), then the adapted linkers on 1,000 test
mentions of new entities beside BM25 in one `compare` invocation.

    python eval/bench_adapt.py [--ks 0,16,64,256] [--max-minutes 5]

Each adapt runs as its own process (wall time and peak RSS of that process), from the KB
folder the suite prepares (entities + the default's caches: what a user builds once with
`gen-linker build-kb --prepare`); the first build of that folder from the JSONL is timed too.
Writes eval/results/adapt.md and .json; the compare table is eval/results/adapt_disjoint.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gen_linker.hardware import machine_line

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "eval" / "runs" / "adapt_disjoint"
SPLIT = ROOT / "eval" / "runs" / "wikimel_disjoint"
SUITE = ROOT / "eval" / "suites" / "adapt_disjoint.yaml"


def timed(argv: list[str]) -> tuple[float, float]:
    """Run `gen-linker argv` as a child; (wall seconds, peak RSS GB of the child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gen_linker.cli", *argv], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"gen-linker {' '.join(argv)} failed (status {status})")
    return time.perf_counter() - t0, usage.ru_maxrss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="0,16,64,256")
    ap.add_argument("--max-minutes", type=float, default=5.0, help="--tune time budget")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    if not (SPLIT / "shots-256.jsonl").exists():
        timed(["disjoint-split", "--input", str(ROOT.parent / "shared" / "data" / "wikimel"), "--output", str(SPLIT)])
    kb = RUNS / "kb"
    rows = []
    if not (kb / "kb.json").exists():
        wall, rss = timed(["build-kb", str(SPLIT / "kb.jsonl"), str(kb), "--prepare",
                           "--linker-config", "gen_linker/data/linkers/default", "--no-progress"])
        rows.append({"step": "build-kb --prepare (once per KB)", "k": None, "tune": False, "wall_s": wall,
                     "peak_rss_gb": rss})
    for tune in (False, True):
        for k in [int(x) for x in args.ks.split(",")]:
            if tune and k == 0:
                continue        # nothing to tune on
            name = f"k{k}" + ("-tune" if tune else "")
            argv = ["adapt", "--kb", str(kb), "--output", str(RUNS / name), "--overwrite", "--no-progress"]
            if k:
                argv += ["--examples", str(SPLIT / f"shots-{k}.jsonl")]
            if tune:
                argv += ["--tune", "--max-minutes", str(args.max_minutes)]
            wall, rss = timed(argv)
            card = yaml.safe_load((RUNS / name / "adapt.yaml").read_text())["report"]
            rows.append({"step": f"adapt {name}", "k": k, "tune": tune, "wall_s": wall, "peak_rss_gb": rss,
                         "fit": card["fit_examples"], "dev": card["dev_examples"], "dev_top1": card["dev_top1"],
                         "chosen": card["chosen"], "tune_s": card["tune_s"]})
            print(rows[-1], flush=True)
    timed(["compare", "--suite", str(SUITE), "--out", str(args.out)])
    write(rows, args)
    return 0


def write(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python eval/bench_adapt.py" + (f" --ks {args.ks}" if args.ks != "0,16,64,256" else ""),
            "machine": machine_line(), "date": time.strftime("%Y-%m-%d")}
    (args.out / "adapt.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = ["# adapt", "", "`gen-linker adapt` on the entity-disjoint WikiMEL split (KB of 18,880 entities; "
             "examples: shots-k, mentions of new entities from train/dev). Each step in a process of its own.", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             "- Top-1 of the adapted linkers on 1,000 test mentions beside BM25: adapt_disjoint.md", "",
             "| step | examples fit / held out | held-out Top-1: base / refit / tuned | kept | tuning s | wall s "
             "| peak RSS GB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        top = r.get("dev_top1") or {}
        scores = " / ".join(f"{top[n]:.3f}" if n in top else "-" for n in ("base", "refit", "tuned")) if top else "-"
        split = f"{r['fit']} / {r['dev']}" if r.get("dev") else ("-" if r["k"] is None else f"{r['k']} (pool only)")
        tune_s = f"{r['tune_s']:.0f}" if r.get("tune_s") is not None else "-"
        lines.append(f"| {r['step']} | {split} | {scores} | {r.get('chosen', '-')} | {tune_s} | {r['wall_s']:.0f} "
                     f"| {r['peak_rss_gb']:.2f} |")
    (args.out / "adapt.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
