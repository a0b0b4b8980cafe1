"""Backends compared: hf vs vllm (beam) vs vllm (greedy constrained), one run, same prompts.

    python eval/bench_backends.py [--mentions 1000] [--configs hf,vllm-beam,vllm-greedy,...]
                                  [--out eval/results]

The WikiMEL setting of issue 2 (the suite's seeded sample of test mentions, KB of 18,880
names, SmolLM2-135M-Instruct in the default dtype, 16 SimCSE demonstrations from the train
split, beam 5). Each configuration runs in a fresh child process so that its peak memory
(max RSS of the process, from wait4) is its own; every child builds the same prompts and
links them with `GenerativeLinker.decode`, each backend with its default batch size.
mentions/s counts decoding only (retrieval, model loading, engine start-up and a 2-prompt
warm-up are timed separately and reported).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {  # name -> (backend, search, torch.compile the vLLM model)
    "hf": ("hf", "beam", False),
    "vllm-beam": ("vllm", "beam", False),
    "vllm-greedy": ("vllm", "greedy", False),
    "vllm-beam-compiled": ("vllm", "beam", True),
    "vllm-greedy-compiled": ("vllm", "greedy", True),
    "hf-greedy": ("hf", "greedy", False),
}
DEFAULT_CONFIGS = "hf,vllm-beam,vllm-greedy,vllm-beam-compiled,vllm-greedy-compiled"


def worker(args) -> dict:
    """Link the sample with one configuration; print one JSON line."""
    from gen_linker import datasets, load_linker
    from gen_linker.evaluation import gold_of, score
    from gen_linker.hardware import cpu_info
    from wikimel import WIKIMEL, WIKIMEL_DEMOS, seeded_sample

    backend_name, search, compiled = CONFIGS[args.worker]

    test = datasets.load(WIKIMEL, split="test")
    sample = seeded_sample(test.valid, 1000)[: args.mentions]   # the suite's sample
    spec = {"backend": {"name": backend_name, "dtype": args.dtype, "vllm_compile": "on" if compiled else "off"},
            "generative": {**WIKIMEL_DEMOS, "num_demos": 16, "demo_retriever": "simcse", "search": search,
                           "beams": args.beams}}
    t0 = time.perf_counter()
    linker = load_linker(test.kb, spec)
    t_start = time.perf_counter() - t0
    backend = linker.backend
    _ = linker.trie
    t0 = time.perf_counter()
    prompts = linker.prompts(sample)
    t_prompts = time.perf_counter() - t0
    linker.decode(prompts[:2])                                                # warm-up
    t0 = time.perf_counter()
    hyps = linker.decode(prompts)
    t_decode = time.perf_counter() - t0
    results = linker.results(sample, hyps)
    scores = score({r.mention_id: r.to_dict() for r in results}, gold_of(sample))
    names = [h[0].value if h else -1 for h in hyps]
    hits = [int(r.entity_id == m.gold) for r, m in zip(results, sample)]
    return {"config": args.worker, "backend": backend_name, "search": search, "mentions": len(sample),
            "batch_size": linker.batch_size, "dtype": backend.dtype, "cpu": cpu_info().line(),
            "compile": compiled,
            "mentions_per_s": len(sample) / t_decode, "decode_s": t_decode, "prompts_s": t_prompts,
            "startup_s": t_start, "avg_prompt_tokens": sum(map(len, prompts)) / len(prompts),
            "top1": scores.top1, "top5": scores.top5, "mrr": scores.mrr, "top1_names": names, "hits": hits}


def run_child(name: str, args, env: dict | None = None) -> dict:
    """One configuration in a fresh process (with `env` added to its environment): its result
    and its peak RSS."""
    cmd = [sys.executable, __file__, "--worker", name, "--mentions", str(args.mentions), "--beams", str(args.beams),
           "--dtype", args.dtype]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    if proc.returncode:
        raise SystemExit(f"{name} failed with exit status {proc.returncode}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["peak_rss_gb"] = row.pop("_peak_rss_kb") / 2**20
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=1000)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import resource

        row = worker(args)
        row["_peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(row))
        return 0

    from machine import machine_line

    rows = []
    for name in args.configs.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(run_child(name, args))
        r = rows[-1]
        print(f"  {r['mentions_per_s']:.2f} mentions/s, Top-1 {r['top1']:.3f}, peak {r['peak_rss_gb']:.2f} GB",
              file=sys.stderr, flush=True)
    write_results(args, rows, machine_line())
    return 0


def write_results(args, rows: list[dict], machine: str) -> None:
    base = next((r for r in rows if r["config"] == "hf"), rows[0])
    ref_names = base["top1_names"]
    lines = ["# Backends: hf vs vLLM (beam, greedy) on WikiMEL", "",
             f"- command: `python eval/bench_backends.py {' '.join(sys.argv[1:])}`",
             f"- machine: {machine}", f"- date: {time.strftime('%Y-%m-%d')}",
             f"- {base['mentions']} WikiMEL test mentions (the wikimel_generative suite's seeded sample), KB 18,880 "
             f"names, SmolLM2-135M-Instruct ({base['dtype']}), 16 SimCSE demonstrations (prompts of "
             f"{base['avg_prompt_tokens']:.0f} tokens on average), beam {args.beams}; each configuration in a fresh "
             "process; mentions/s = decoding only (prompt building, model loading and engine start-up excluded "
             "and listed)", "",
             "| configuration | batch | mentions/s | vs hf | Top-1 | Top-5 | MRR | same top-1 as hf | peak RSS | start-up s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = sum(a == b for a, b in zip(r["top1_names"], ref_names)) / len(ref_names)
        label = r["config"]
        lines.append(f"| {label} | {r['batch_size']} | {r['mentions_per_s']:.2f} | "
                     f"{r['mentions_per_s'] / base['mentions_per_s']:.2f}x | {r['top1']:.3f} | {r['top5']:.3f} | "
                     f"{r['mrr']:.3f} | {same:.1%} | {r['peak_rss_gb']:.2f} GB | {r['startup_s']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "backends"
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    for r in rows:
        r.pop("top1_names", None)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
