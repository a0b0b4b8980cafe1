"""KB-scale benchmark: a synthetic KB grown 10k -> 100k -> 1M entities, WikiMEL's real entities
inside it, built into KB folders and linked against.

    python eval/bench_kb_scale.py                      # 10k, 100k, 1M; dense embeddings up to 1M
    python eval/bench_kb_scale.py --dense-up-to 100000 # 1M without its dense part (trie + BM25 only)
    # smoke test (minutes): tiny sizes, the ANN path from 3k
    python eval/bench_kb_scale.py --sizes 2000,5000 --mentions 40 --exact-below 3000 --out /tmp/kbs --work /tmp/kbs

Entities of size N: the gold entities of the mention sample (WikiMEL test, seeded sample of
--mentions), then the other WikiMEL entities, then synthetic distractors (names recombined from
WikiMEL first and last name tokens, descriptions from WikiMEL description fields), cut at N and
shuffled (seeded). Each size's synthetic entities are a prefix of the next size's.

Per size, into --work/kb-N (kept between runs: a rerun reuses what is built):
- build, each part timed: reading + writing the folder (streamed, progress), BM25 matrix over
  names + aliases, the name trie for the packaged SmolLM2 tokenizer, MiniLM entity embeddings
  (resumable: a killed run continues from its last 20k chunk; ~2 h at 1M on 2 cores, built
  once), the faiss IVF index (from --exact-below entities); folder size per part.
- linking: mentions/s of the `bm25` linker (its default top 10, and top 100; top 10 also with
  the sparse product, the baseline of the early-stopping top-k) and of the `retrieval` linker
  (BM25 + dense, rank fusion, top 100) on the mention sample, in chunks of 64 as the batch
  does; per-mention cost against the smallest size; recall@10/100 of the retriever (and of
  BM25 alone). Where the dense part is built, also the default linker (the shipped fusion over
  the retriever's top 20): its mentions/s (median of 3 passes, and the first pass, which reads
  the memory-mapped embeddings it re-scores) and its Top-1 beside BM25's, measured in the same
  run (the distractors make the task harder as the KB grows).
- memory: one worker process, then two at once, each loading the retrieval linker and the
  trie from the folder and linking 64 mentions: RSS, PSS and USS (psutil), and the PSS of the
  KB's cache files mapped into it (counted once across workers when shared).

Targets (issue 18): per-mention cost at 1M within 1.5x of 10k; trie + BM25 of 1M built in under
10 minutes; KB arrays counted once across workers. Writes eval/results/kb_scale.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402
from wikimel import WIKIMEL, seeded_sample  # noqa: E402


# ------------------------------------------------------------------------- entities
def synthetic_pools(entities) -> dict:
    """Name tokens and description fields of the real entities, to recombine."""
    first, last, fields = [], [], {}
    layouts = []
    for e in entities:
        parts = e.name.split()
        if len(parts) >= 2:
            first.append(parts[0])
            last.append(parts[-1])
        if e.description:
            layout = []
            for f in e.description.rstrip(".").split(". "):
                key, _, value = f.partition(": ")
                if value:
                    fields.setdefault(key, []).append(value)
                    layout.append(key)
            layouts.append(layout)
    return {"first": first, "last": last, "fields": fields, "layouts": layouts}


def synthetic_entities(n: int, pools: dict, seed: int = 0):
    """`n` distractors, the same first ones for every n (one seeded sequence)."""
    from gen_linker.schema import Entity

    rng = random.Random(seed)
    first, last, fields, layouts = pools["first"], pools["last"], pools["fields"], pools["layouts"]
    for i in range(n):
        name = f"{rng.choice(first)} {rng.choice(last)}"
        if rng.random() < 0.25:
            name = f"{rng.choice(first)} {rng.choice(first)} {rng.choice(last)}"
        layout = rng.choice(layouts)
        desc = ". ".join(f"{k}: {rng.choice(fields[k])}" for k in layout) + "." if layout else None
        yield Entity(f"S{i}", name, description=desc)


def write_kb_source(size: int, mentions, real_kb, pools: dict, path: Path) -> None:
    """The entities JSONL of size `size` (see the module docstring)."""
    from gen_linker.kb import write_entities

    gold = {m.gold for m in mentions}
    real = [e for e in real_kb if e.id in gold] + [e for e in real_kb if e.id not in gold]
    chosen = real[:size] + list(synthetic_entities(max(0, size - len(real)), pools))
    random.Random(1).shuffle(chosen)
    write_entities(chosen, path)


# ---------------------------------------------------------------------------- build
def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def file_sizes(cache: Path) -> dict:
    out: dict[str, int] = {}
    for f in cache.glob("*"):
        if f.is_file():
            kind = f.name.split("-")[0].split(".")[0]
            out[kind] = out.get(kind, 0) + f.stat().st_size
    return out


def build(size: int, source: Path, folder: Path, dense: bool, exact_below: int) -> dict:
    from gen_linker.candidates import CandidateRetriever, name_bm25
    from gen_linker.encoders import SentenceEncoder
    from gen_linker.kb import KnowledgeBase

    row: dict = {"entities": size}
    t0 = time.perf_counter()
    kb = KnowledgeBase.from_jsonl(source, progress=True)
    kb.save(folder, progress=True)
    row["read_write_s"] = time.perf_counter() - t0
    for old in (folder / "cache").glob("bm25-names-*"):
        old.unlink()
    _, row["bm25_s"] = timed(lambda: name_bm25(kb))
    tokenizer, end_token = smollm2_tokenizer()
    from gen_linker.trie import name_trie

    for old in (folder / "cache").glob("trie-*"):
        old.unlink()
    trie, row["trie_s"] = timed(lambda: name_trie(kb.names(), tokenizer, end_token, kb.cache_dir(), kb.fingerprint))
    row["trie_nodes"] = trie.n_nodes
    row["trie_and_bm25_s"] = row["trie_s"] + row["bm25_s"]
    if dense:
        encoder = SentenceEncoder(None)
        t0 = time.perf_counter()
        had_emb = any((folder / "cache").glob("emb-*[0-9a-f].npy"))
        CandidateRetriever(kb, encoder, show_progress=True, exact_below=10**12)   # embeddings (resumable)
        row["embeddings_s"] = None if had_emb else time.perf_counter() - t0
        if size >= exact_below:
            for old in (folder / "cache").glob("ann-*"):
                old.unlink()
            _, row["ann_s"] = timed(lambda: CandidateRetriever(kb, encoder, show_progress=True, exact_below=exact_below))
    row["files_bytes"] = file_sizes(folder / "cache")
    row["files_bytes"]["entities"] = (folder / "entities.jsonl").stat().st_size
    row["folder_bytes"] = sum(row["files_bytes"].values())
    return row


def smollm2_tokenizer():
    """The packaged SmolLM2's tokenizer and the default generative prompt's name end token:
    the trie the default generative linker builds for this KB."""
    from transformers import AutoTokenizer

    from gen_linker.backends import end_token_for
    from gen_linker.models import resolve_llm
    from gen_linker.prompting import PromptTemplate
    from gen_linker.spec import LinkerSpec

    tok = AutoTokenizer.from_pretrained(resolve_llm(None))
    return tok, end_token_for(tok, PromptTemplate.load(LinkerSpec().generative.prompt).name_end)


# -------------------------------------------------------------------------- linking
def link_speed(folder: Path, mentions, linker_name: str | None, exact_below: int, top_k: int | None = 100,
               bm25_kernel: bool = True, passes: int = 1) -> dict:
    """Mentions/s of `linker_name` returning `top_k` candidates (the median of `passes` passes
    over the mentions: BM25 links 1,000 in a few tens of ms, where one stall would count; the
    first pass is also kept: it reads the memory-mapped arrays from disk or page cache), and
    the recall of those (recall@1 is Top-1); with `bm25_kernel` False, BM25's top-k comes from
    the sparse product (the baseline). `linker_name` None: the default linker, as shipped."""
    from gen_linker.candidates import recall_at
    from gen_linker.loader import load_linker

    os.environ["GEN_LINKER_EXACT_BELOW"] = str(exact_below)
    os.environ["GEN_LINKER_BM25_KERNEL"] = "1" if bm25_kernel else "0"
    spec = None if linker_name is None else {"linker": linker_name, "top_k": top_k}
    linker, load_s = timed(lambda: load_linker(folder, spec))
    linker.link(mentions[:16])                                   # warm-up: lazy parts, first batch
    runs = [timed(lambda: [r for i in range(0, len(mentions), 64) for r in linker.link(mentions[i: i + 64])])
            for _ in range(passes)]
    results, link_s = runs[0][0], sorted(t for _, t in runs)[len(runs) // 2]
    cands = [r.candidates for r in results]
    recall = recall_at(cands, mentions, (1, 10, 100))
    first_s = runs[0][1]
    return {"load_s": load_s, "mentions_per_s": len(mentions) / link_s, "ms_per_mention": 1000 * link_s / len(mentions),
            "first_pass_mentions_per_s": len(mentions) / first_s, "first_pass_ms_per_mention": 1000 * first_s / len(mentions),
            "recall@1": recall[1], "recall@10": recall[10], "recall@100": recall[100]}


# --------------------------------------------------------------------------- memory
WORKER = """
import json, os, sys, psutil
os.environ["GEN_LINKER_EXACT_BELOW"] = sys.argv[3]
import torch; torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
from bench_kb_scale import smollm2_tokenizer
from gen_linker import datasets
from gen_linker.loader import load_linker
from gen_linker.trie import name_trie
from gen_linker.kb import KnowledgeBase
folder = sys.argv[1]
kb = KnowledgeBase.open(folder)
parts = {}
linker = load_linker(kb, {"linker": sys.argv[2]})
tok, end = smollm2_tokenizer()
trie = name_trie(kb.names(), tok, end, kb.cache_dir(), kb.fingerprint)
mentions = [m for m in datasets.load(sys.argv[5]).valid][:64]
linker.link(mentions)
for seq in range(0, trie.n_nodes, max(1, trie.n_nodes // 2000)):  # touch the trie as decoding does
    trie.children(seq)
print("ready", flush=True)
sys.stdin.readline()
"""


def kb_pss(proc, cache: Path) -> int:
    """PSS of the mappings of the KB's cache files in `proc` (bytes)."""
    total = 0
    for m in proc.memory_maps(grouped=True):
        if m.path.startswith(str(cache)):
            total += m.pss
    return total


def memory(folder: Path, n_workers: int, linker: str, exact_below: int, mentions_file: Path) -> dict:
    import psutil

    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), linker, str(exact_below),
                               str(Path(__file__).resolve().parent), str(mentions_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n_workers)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"memory worker failed (exit {p.wait()})")
        rows = []
        for p in procs:
            ps = psutil.Process(p.pid)
            info = ps.memory_full_info()
            rows.append({"rss": info.rss, "pss": info.pss, "uss": info.uss, "kb_arrays_pss": kb_pss(ps, folder / "cache")})
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
        for p in procs:
            p.wait(timeout=60)
    return {"workers": rows, "sum_pss": sum(r["pss"] for r in rows), "sum_kb_arrays_pss": sum(r["kb_arrays_pss"] for r in rows)}


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dense-up-to", type=int, default=1_000_000, help="build MiniLM embeddings up to this size")
    ap.add_argument("--mentions", type=int, default=1000, help="WikiMEL test mentions (seeded sample)")
    ap.add_argument("--exact-below", type=int, default=None, help="ANN from this many entities (default: the library's)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gen_linker_kb_scale")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    from gen_linker import datasets
    from gen_linker.candidates import EXACT_BELOW

    exact_below = args.exact_below or EXACT_BELOW
    test = datasets.load(WIKIMEL, "melbench", "test")
    mentions = seeded_sample(test.valid, args.mentions)
    pools = synthetic_pools(test.kb)
    args.work.mkdir(parents=True, exist_ok=True)
    mentions_file = args.work / "mentions.jsonl"
    mentions_file.write_text("".join(json.dumps(m.to_dict()) + "\n" for m in mentions))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"== {size:,} entities", flush=True)
        source, folder = args.work / f"entities-{size}.jsonl", args.work / f"kb-{size}"
        if not source.exists():
            write_kb_source(size, mentions, test.kb, pools, source)
        dense = size <= args.dense_up_to
        row = build(size, source, folder, dense, exact_below)
        row["ann"] = dense and size >= exact_below
        row["bm25"] = link_speed(folder, mentions, "bm25", exact_below, top_k=10, passes=5)   # the linker's default
        row["bm25_product"] = link_speed(folder, mentions, "bm25", exact_below, top_k=10, bm25_kernel=False, passes=5)
        row["bm25_100"] = link_speed(folder, mentions, "bm25", exact_below, top_k=100, passes=5)
        if dense:
            row["retrieval"] = link_speed(folder, mentions, "retrieval", exact_below)
            row["default"] = link_speed(folder, mentions, None, exact_below, top_k=None, passes=3)
        if not args.skip_memory:
            name = "retrieval" if dense else "bm25"
            row["memory_linker"] = name
            row["memory_1"] = memory(folder, 1, name, exact_below, mentions_file)
            row["memory_2"] = memory(folder, 2, name, exact_below, mentions_file)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    meta = {"command": "python eval/bench_kb_scale.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "mentions": len(mentions), "exact_below": exact_below}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kb_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "kb_scale.md").write_text(table(meta, rows))
    print(table(meta, rows))
    return 0


def table(meta: dict, rows: list[dict]) -> str:
    mib = lambda b: f"{b / 2**20:,.0f}" if b is not None else "-"  # noqa: E731
    sec = lambda s: f"{s:,.1f}" if s is not None else "-"  # noqa: E731
    base = rows[0]
    lines = ["# KB scale: synthetic KBs with WikiMEL's entities inside", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- mentions: seeded sample of {meta['mentions']} WikiMEL test mentions; ANN (faiss IVF, SQ8, exact "
             f"re-scoring) from {meta['exact_below']:,} entities, exact search below", "",
             "## Build (seconds) and folder size (MiB)", "",
             "| entities | read + write | BM25 | trie (SmolLM2) | trie + BM25 | embeddings (MiniLM) | ANN index "
             "| entities.jsonl | BM25 | trie | embeddings | ANN | folder |", "|---" * 13 + "|"]
    for r in rows:
        f = r["files_bytes"]
        lines.append(f"| {r['entities']:,} | {sec(r['read_write_s'])} | {sec(r['bm25_s'])} | {sec(r['trie_s'])} | "
                     f"{sec(r['trie_and_bm25_s'])} | {sec(r.get('embeddings_s'))} | {sec(r.get('ann_s'))} | "
                     f"{mib(f.get('entities'))} | {mib(f.get('bm25'))} | {mib(f.get('trie'))} | {mib(f.get('emb'))} | "
                     f"{mib(f.get('ann'))} | {mib(r['folder_bytes'])} |")
    lines += ["", "`-` under embeddings / ANN: not built at this size (`--dense-up-to`, `--exact-below`), or the "
              "embeddings were built by an earlier run (resumable, reused) and are not timed again.", "",
              "## Linking (one process, chunks of 64 mentions; bm25: the median of 5 passes)", "",
              "BM25's top-k: early stopping over impact-ordered postings (gen_linker/bm25_kernel.py, numba); "
              "'sparse product' is the path before it (and without numba), measured in the same run.", "",
              "| entities | dense | bm25 top-10 mentions/s | cost vs smallest | bm25 top-10, sparse product | "
              "kernel speed-up | bm25 top-100 mentions/s | cost vs smallest | retrieval mentions/s (top 100) | "
              "cost vs smallest | recall@10 (retrieval) | recall@100 (retrieval) | recall@10 (bm25) |", "|---" * 13 + "|"]
    cost = lambda r, key: r[key]["ms_per_mention"] / base[key]["ms_per_mention"]  # noqa: E731
    for r in rows:
        b, p, h, d = r["bm25"], r["bm25_product"], r["bm25_100"], r.get("retrieval")
        lines.append(f"| {r['entities']:,} | {'ANN' if r['ann'] else ('exact' if d else 'none')} | "
                     f"{b['mentions_per_s']:,.0f} | {cost(r, 'bm25'):.2f}x | {p['mentions_per_s']:,.0f} | "
                     f"{p['ms_per_mention'] / b['ms_per_mention']:.2f}x | {h['mentions_per_s']:,.0f} | "
                     f"{cost(r, 'bm25_100'):.2f}x | "
                     + (f"{d['mentions_per_s']:.1f} | " + (f"{cost(r, 'retrieval'):.2f}x" if base.get("retrieval") else "-")
                        + f" | {d['recall@10']:.3f} | {d['recall@100']:.3f}" if d else "- | - | - | -")
                     + f" | {h['recall@10']:.3f} |")
    if any("default" in r for r in rows):
        lines += ["", "## The default linker (what `gen-linker link` runs) beside BM25, same run", "",
                  "The shipped default (fusion over the retriever's top 20, gen_linker/data/linkers/default) on "
                  "the same mentions, chunks of 64: the median of 3 passes, and the first pass after loading (its "
                  "exact re-scoring reads rows of the memory-mapped embeddings: page faults the first time). "
                  "Top-1 beside BM25's and the retriever's: the synthetic distractors recombine real first and "
                  "last names, so a mention's name is shared by more entities as the KB grows.", "",
                  "| entities | default mentions/s | cost vs smallest | first pass mentions/s | cost vs smallest "
                  "(first pass) | Top-1 default | Top-1 bm25 | Top-1 retrieval |", "|---" * 8 + "|"]
        first = next(r for r in rows if "default" in r)["default"]
        for r in rows:
            if "default" not in r:
                continue
            f = r["default"]
            lines.append(f"| {r['entities']:,} | {f['mentions_per_s']:.1f} | "
                         f"{f['ms_per_mention'] / first['ms_per_mention']:.2f}x | {f['first_pass_mentions_per_s']:.1f} | "
                         f"{f['first_pass_ms_per_mention'] / first['first_pass_ms_per_mention']:.2f}x | "
                         f"{f['recall@1']:.3f} | {r['bm25']['recall@1']:.3f} | {r['retrieval']['recall@1']:.3f} |")
    if any("memory_1" in r for r in rows):
        lines += ["", "## Memory of linker workers (MiB; PSS shares a page among the processes mapping it)", "",
                  "| entities | linker | 1 worker RSS | 1 worker PSS | 1 worker USS | KB arrays PSS (1 worker) | "
                  "2 workers: sum PSS | KB arrays PSS summed over 2 | 2nd worker adds |", "|---" * 9 + "|"]
        for r in rows:
            if "memory_1" not in r:
                continue
            one, two = r["memory_1"], r["memory_2"]
            w = one["workers"][0]
            lines.append(f"| {r['entities']:,} | {r['memory_linker']} | {mib(w['rss'])} | {mib(w['pss'])} | "
                         f"{mib(w['uss'])} | {mib(w['kb_arrays_pss'])} | {mib(two['sum_pss'])} | "
                         f"{mib(two['sum_kb_arrays_pss'])} | {mib(two['sum_pss'] - one['sum_pss'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
