"""Run an evaluation suite (a small YAML file in eval/suites/) and write its results table.

    python eval/run_suite.py eval/suites/wikimel_generative.yaml [--sample N] [--runs a,b]

Predictions go to eval/runs/SUITE/RUN.jsonl (git-ignored; a rerun resumes them), the table
to eval/results/SUITE.md and .json, with the command, the machine and the date.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gen_linker import datasets  # noqa: E402
from gen_linker.backends import load_backend  # noqa: E402
from gen_linker.batch import link_to_file  # noqa: E402
from gen_linker.evaluation import gold_of, read_predictions, score  # noqa: E402
from gen_linker.linkers.baselines import BM25NameLinker, ExactNameLinker  # noqa: E402
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker  # noqa: E402
from gen_linker.retrieval import demonstration_pool, make_retriever  # noqa: E402
from machine import machine_line  # noqa: E402

GEN_KEYS = {f for f in GenerativeConfig.__dataclass_fields__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", type=Path)
    ap.add_argument("--sample", type=int, help="override the suite's sample size")
    ap.add_argument("--runs", help="comma-separated run names to do (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args(argv)

    suite = yaml.safe_load(args.suite.read_text())
    base = args.suite.resolve().parent.parent.parent       # paths in a suite are relative to the repo
    ds = suite["dataset"]
    test = datasets.load(base / ds["path"], ds.get("format", "auto"), ds.get("split"))
    mentions = test.valid
    size = args.sample or suite.get("sample", {}).get("size")
    if size and size < len(mentions):
        mentions = random.Random(suite.get("sample", {}).get("seed", 0)).sample(mentions, size)
    gold = gold_of(mentions)
    kb = test.kb
    pool = []
    if "demos" in suite:
        d = suite["demos"]
        pool = demonstration_pool(datasets.load(base / d["path"], d.get("format", "auto"), d.get("split")).valid, kb)
    wanted = set(args.runs.split(",")) if args.runs else None
    runs_dir = ROOT / "eval" / "runs" / suite["name"]
    backend = None
    rows = []
    for run in suite["runs"]:
        if wanted and run["name"] not in wanted:
            continue
        if run["linker"] == "exact":
            linker = ExactNameLinker(kb)
        elif run["linker"] == "bm25":
            linker = BM25NameLinker(kb)
        else:
            backend = backend or load_backend(suite.get("backend", "hf"), suite.get("llm"))
            cfg = GenerativeConfig(**{k: v for k, v in run.items() if k in GEN_KEYS})
            kind = cfg.retriever if cfg.num_demos > 0 else "none"
            linker = GenerativeLinker(kb, backend, make_retriever(kind, pool, seed=cfg.seed), cfg)
            _ = linker.trie
        pred_file = runs_dir / f"{run['name']}.jsonl"
        already = sum(1 for _ in pred_file.open()) if pred_file.exists() else 0
        t0 = time.perf_counter()
        link_to_file(linker, mentions, pred_file, chunk_size=64, resume=True, total=len(mentions))
        elapsed = time.perf_counter() - t0
        scores = score(read_predictions(pred_file), gold)
        done_now = len(mentions) - min(already, len(mentions))
        rate = done_now / elapsed if done_now else None
        rows.append({"run": run["name"], **{k: v for k, v in run.items() if k != "name"},
                     **scores.to_dict(), "mentions_per_s": rate})
        print(f"{run['name']}: {scores.table()}" + (f"  ({rate:.2f} mentions/s)" if rate else ""), flush=True)
    suite["sample"] = {**suite.get("sample", {}), "size": len(mentions)}
    write_results(args, suite, rows, len(test.valid), len(kb), len(pool))
    return 0


def write_results(args, suite: dict, rows: list[dict], n_split: int, n_kb: int, n_pool: int) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute()
                                else sys.argv[0], *sys.argv[1:]])
    meta = {"suite": suite["name"], "command": cmd, "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "split_mentions": n_split, "kb_entities": n_kb,
            "demo_pool": n_pool, "sample": suite.get("sample"), "llm": suite.get("llm")}
    (args.out / f"{suite['name']}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {suite['name']}", "",
             f"- command: `{cmd}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- data: {suite['dataset']['path']} split {suite['dataset'].get('split')} "
             f"({n_split} mentions), sample {suite.get('sample')}; KB {n_kb} entities; "
             f"demonstration pool {n_pool} train mentions", f"- LLM: {suite.get('llm')} ({suite.get('backend', 'hf')} backend)",
             "", "| run | linker | demos | retriever | beams | Top-1 | Top-5 | Top-10 | MRR | NIL | errors | mentions/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gen = r["linker"] == "generative"
        rate = f"{r['mentions_per_s']:.2f}" if r.get("mentions_per_s") else "-"
        lines.append(f"| {r['run']} | {r['linker']} | {r.get('num_demos', '-') if gen else '-'} | "
                     f"{r.get('retriever', 'simcse') if gen and r.get('num_demos') else '-'} | "
                     f"{r.get('num_beams', 5) if gen else '-'} | {r['top1']:.4f} | {r['top5']:.4f} | "
                     f"{r['top10']:.4f} | {r['mrr']:.4f} | {r['nil']} | {r['errors']} | {rate} |")
    if suite.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in suite["notes"]]
    (args.out / f"{suite['name']}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
