"""Which dtype should `auto` pick on which processor? bf16 vs float32, hf and vLLM, under
oneDNN ISA caps that emulate the processor kinds users have.

    python eval/bench_dtype.py [--mentions 300] [--isas native,AVX512_CORE_BF16,AVX2]
                               [--configs hf,vllm-beam] [--out eval/results]

Three processor kinds on one Intel machine with AMX: `native` (AMX), `AVX512_CORE_BF16`
(ONEDNN_MAX_CPU_ISA hides AMX: bf16 matmuls on AVX512-BF16 alone, as on an AMD EPYC Zen 4),
and `AVX2` (ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS at AVX2: no bf16 instructions and
no AVX-512, as on an older or smaller CPU). Each (processor kind, backend, dtype) links the same
seeded WikiMEL sample (the suites' sample, first N) in a fresh process with the generative
default (16 SimCSE demonstrations, beam 5), through `bench_backends.py`'s worker: decoding
mentions/s, Top-1, and the share of top-1 answers equal to float32's on the same backend.
`auto` should be bfloat16 only where it is both faster and not less accurate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ISA_ENV = {
    "native": {},
    "AVX512_CORE_BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def main() -> int:
    import bench_backends
    from machine import machine_line

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=300)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--isas", default="native,AVX512_CORE_BF16,AVX2", help=f"of: {', '.join(ISA_ENV)}")
    ap.add_argument("--configs", default="hf,vllm-beam", help="bench_backends configurations")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    ap.add_argument("--append", action="store_true", help="keep the finished rows of earlier invocations in the table")
    ap.add_argument("--bm25-only", action="store_true",
                    help="only (re)measure the BM25 rows of the committed table, on its mentions")
    args = ap.parse_args()
    if args.bm25_only:
        add_bm25_rows(args.out / "dtype.md")
        return 0
    partial = args.out / "dtype.partial.jsonl"        # finished runs, so a stopped bench resumes
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[(r["isa"], r["config"], r["dtype"], r["mentions"])] = r
    rows = []
    for isa in args.isas.split(","):
        for config in args.configs.split(","):
            for dtype in args.dtypes.split(","):
                key = (isa, config, dtype, args.mentions)
                if key not in done:
                    print(f"running {isa} {config} {dtype} ...", file=sys.stderr, flush=True)
                    child = argparse.Namespace(mentions=args.mentions, beams=args.beams, dtype=dtype)
                    try:
                        row = bench_backends.run_child(config, child, ISA_ENV[isa])
                    except SystemExit as e:       # a crash is a finding: recorded, not fatal
                        row = {"config": config, "dtype": dtype, "mentions": args.mentions, "failed": str(e),
                               "mentions_per_s": 0.0, "top1": 0.0, "cpu": "-", "top1_names": [], "hits": []}
                    row["isa"] = isa
                    done[key] = row
                    with partial.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                r = done[key]
                print(f"  {isa} {config} {dtype}: " + (f"FAILED ({r['failed']})" if r.get("failed") else
                      f"{r['mentions_per_s']:.2f} mentions/s, Top-1 {r['top1']:.3f}"), file=sys.stderr, flush=True)
                rows.append(r)
    if args.append:                      # rows of earlier invocations (other ISAs or sizes) stay in the table
        rows = [r for k, r in done.items() if r not in rows] + rows
        order = {"native": 0, "AVX512_CORE_BF16": 1, "AVX2": 2}
        rows.sort(key=lambda r: (order.get(r["isa"], 9), r["config"], r["dtype"]))
    write_results(args, rows, machine_line())
    add_bm25_rows(args.out / "dtype.md")
    return 0


def bm25_row(mentions: int) -> str:
    """The table row of BM25 over names on the same first `mentions` of the seeded sample
    (no dtype, no backend: the baseline every accuracy above is read against)."""
    from gen_linker import datasets, load_linker
    from gen_linker.evaluation import top1
    from wikimel import WIKIMEL, seeded_sample

    test = datasets.load(WIKIMEL, split="test")
    sample = seeded_sample(test.valid, 1000)[:mentions]
    linker = load_linker(test.kb, {"linker": "bm25"})
    t0 = time.perf_counter()
    results = linker.link(sample)
    rate = len(sample) / (time.perf_counter() - t0)
    return f"| any | bm25 | - | {mentions} | {rate:.0f} | - | {top1(results, sample):.3f} | - | - | BM25 over names, {time.strftime('%Y-%m-%d')} |"


def add_bm25_rows(table: Path) -> None:
    """Put a BM25 row for each mention count of the table's runs at the table's end (replacing
    earlier BM25 rows)."""
    lines = [x for x in table.read_text().splitlines() if not x.startswith("| any | bm25 |")]
    end = next((i for i, x in enumerate(lines) if x.startswith("## Reading")), len(lines))
    rows = [i for i in range(end) if lines[i].startswith("| ") and not lines[i].startswith("| processor kind")]
    counts = sorted({int(lines[i].split("|")[4]) for i in rows if lines[i].split("|")[4].strip().isdigit()},
                    reverse=True)
    last = rows[-1]
    lines[last + 1 : last + 1] = [bm25_row(n) for n in counts]
    table.write_text("\n".join(lines) + "\n")


def paired_diff(a: dict, b: dict, n: int = 1000) -> tuple[float, float, float]:
    """Top-1 of a minus b on the same mentions, with a bootstrap 95% interval."""
    import numpy as np

    ha, hb = np.array(a["hits"], dtype=float), np.array(b["hits"], dtype=float)
    d = ha - hb
    idx = np.random.default_rng(0).integers(0, len(d), size=(n, len(d)))
    low, high = np.percentile(d[idx].mean(1), [2.5, 97.5])
    return float(d.mean()), float(low), float(high)


def write_results(args, rows: list[dict], machine: str) -> None:
    fp32 = {(r["isa"], r["config"], r["mentions"]): r for r in rows if r["dtype"] == "float32"}
    lines = ["# dtype: bfloat16 vs float32 per processor kind (what `--dtype auto` picks)", "",
             f"- command: `python eval/bench_dtype.py {' '.join(sys.argv[1:])}`",
             f"- machine: {machine}", f"- date: {time.strftime('%Y-%m-%d')}",
             f"- {rows[0]['mentions']} WikiMEL test mentions (first of the suites' seeded sample), KB 18,880 names, "
             f"SmolLM2-135M-Instruct, 16 SimCSE demonstrations, beam {args.beams}; each row a fresh process; "
             "mentions/s = decoding only. Processor kinds emulated with oneDNN's ISA cap (`cpu` column: what "
             "the process saw); the machine was otherwise idle.", "",
             "| processor kind | backend | dtype | mentions | mentions/s | bf16 / fp32 speed | Top-1 | bf16 - fp32 Top-1 (95% interval) | same top-1 as fp32 | cpu |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = fp32.get((r["isa"], r["config"], r["mentions"]))
        ratio = f"{r['mentions_per_s'] / ref['mentions_per_s']:.2f}x" if ref and r["dtype"] == "bfloat16" else "-"
        same = (f"{sum(a == b for a, b in zip(r['top1_names'], ref['top1_names'])) / len(ref['top1_names']):.1%}"
                if ref else "-")
        if r.get("failed"):
            lines.append(f"| {r['isa']} | {r['config']} | {r['dtype']} | {r['mentions']} | fails: {r['failed']} "
                         "| - | - | - | - | - |")
            continue
        if ref and ref.get("failed"):
            ref = None
        diff = "-"
        if ref and r["dtype"] == "bfloat16":
            d = paired_diff(r, ref)
            diff = f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
        lines.append(f"| {r['isa']} | {r['config']} | {r['dtype']} | {r['mentions']} | {r['mentions_per_s']:.2f} | "
                     f"{ratio} | {r['top1']:.3f} | {diff} | {same} | {r['cpu']} |")
    text = "\n".join(lines) + "\n"
    old = args.out / "dtype.md"
    if old.exists() and "## Reading" in old.read_text():           # hand-written reading survives
        text += "\n## Reading" + old.read_text().split("## Reading", 1)[1]
    args.out.mkdir(parents=True, exist_ok=True)
    old.write_text(text)
    (args.out / "dtype.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "top1_names"} for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
