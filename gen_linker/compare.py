"""`gen-linker compare --suite FILE.yaml`: several linkers on the same mentions, one table.

Comparing generative and discriminative linking is one of the toolkit's three uses, so it is a
command. A suite (small YAML, lm-evaluation-harness style) names the data, the sample, the
artefacts to prepare and a list of runs, each a `LinkerSpec` given as overrides of a shared
`base`:

    name: wikimel_generative
    root: ../..                      # paths below are relative to this (default: the suite's folder)
    dataset: {path: ../shared/data/wikimel, format: melbench, split: test}
    kb: eval/runs/wikimel/kb.jsonl   # optional: default the dataset's own KB
    sample: {size: 1000, seed: 0}
    prepare:                         # gen-linker commands run once, skipped when `creates` exists
      - {creates: eval/runs/wikimel/kb.jsonl, run: [convert, --input, ..., --entities-out, ...]}
    base: {generative: {demos: ../shared/data/wikimel, demos_split: train}}
    runs:
      - {name: bm25, linker: bm25}
      - {name: gen-16, generative: {num_demos: 16}}
      - {name: mine, linker_config: my-linker/}    # a saved linker, with `base` and the run's keys on top
    notes: ["written under the table"]

Each run links in a process of its own (so its peak memory and start-up time are its own),
into `RUNS/RUN.jsonl` with resume: a killed compare reruns only what is missing. The table
(Markdown + JSON, with the command, machine and date) has Top-1/5/10, MRR, NIL, errors,
mentions/s, peak RSS and start-up time per run, and a paired comparison per pair of runs:
mentions one gets right and the other wrong, and a bootstrap 95% interval of the Top-1
difference.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .datasets.jsonl import mentions_text, write_mentions
from .errors import GenLinkerError
from .spec import LinkerSpec, SpecError

SUITE_KEYS = {"name", "description", "root", "dataset", "kb", "sample", "prepare", "base", "runs", "notes",
              "results", "runs_dir"}
RUN_KEYS = {"name", "label", "group", "linker_config"}
BOOTSTRAP = 1000


@dataclass
class Run:
    name: str
    spec: LinkerSpec
    label: str = ""
    group: str = ""


@dataclass
class Suite:
    name: str
    path: Path
    root: Path
    dataset: dict
    kb: str | None
    sample: dict
    prepare: list[dict]
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    description: str = ""
    results: Path | None = None
    runs_dir: Path | None = None

    def resolve(self, path: str | Path) -> Path:
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else self.root / p


def load_suite(path: str | Path) -> Suite:
    """A suite file, checked: unknown keys, runs without names, and every run's spec (keys,
    values) fail here, before anything is linked."""
    path = Path(path)
    if not path.exists():
        raise GenLinkerError(f"suite {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise GenLinkerError(f"suite {path} must be a mapping")
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise GenLinkerError(f"suite {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(SUITE_KEYS))}")
    for key in ("name", "dataset", "runs"):
        if not data.get(key):
            raise GenLinkerError(f"suite {path} needs {key!r}")
    root = (path.parent / data.get("root", ".")).resolve()
    base = data.get("base") or {}
    runs, seen = [], set()
    for i, raw in enumerate(data["runs"], 1):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise GenLinkerError(f"suite {path}: run {i} needs a name")
        name = str(raw["name"])
        if name in seen:
            raise GenLinkerError(f"suite {path}: run name {name!r} appears twice")
        seen.add(name)
        overrides = {k: v for k, v in raw.items() if k not in RUN_KEYS}
        source = f"suite {path.name}, run {name!r}"
        if raw.get("linker_config"):       # a saved linker (folder or YAML), with the base and the run on top
            from .loader import read_spec

            config = Path(raw["linker_config"])
            start = read_spec(config if config.is_absolute() else root / config)
        else:
            start = LinkerSpec()
        spec = start.merged(base, base_dir=root, source=source).merged(overrides, base_dir=root, source=source)
        runs.append(Run(name, spec, str(raw.get("label", "")), str(raw.get("group", ""))))
    suite = Suite(name=str(data["name"]), path=path, root=root, dataset=dict(data["dataset"]), kb=data.get("kb"),
                  sample=dict(data.get("sample") or {}), prepare=list(data.get("prepare") or []), runs=runs,
                  notes=list(data.get("notes") or []), description=str(data.get("description", "")))
    suite.results = suite.resolve(data.get("results", "eval/results"))
    suite.runs_dir = suite.resolve(data.get("runs_dir", f"eval/runs/{suite.name}"))
    return suite


# ----------------------------------------------------------------------------- running
def prepare(suite: Suite, progress: bool = True) -> None:
    """Run the suite's `prepare` commands whose `creates` path is missing (in order)."""
    for step in suite.prepare:
        creates, argv = step.get("creates"), step.get("run")
        if not creates or not isinstance(argv, list):
            raise GenLinkerError(f"suite {suite.path}: a prepare step needs `creates` and `run: [command, args...]`")
        if suite.resolve(creates).exists():
            continue
        argv = [str(a) for a in argv] + ([] if progress else ["--no-progress"] if argv[0] in _PROGRESS_CMDS else [])
        print(f"compare: preparing {creates}: gen-linker {' '.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "gen_linker.cli", *argv], cwd=suite.root)
        if proc.returncode or not suite.resolve(creates).exists():
            raise GenLinkerError(f"suite {suite.path}: prepare step for {creates} failed (exit {proc.returncode})")


_PROGRESS_CMDS = {"train-dim", "describe", "train", "caption", "train-reranker"}


def sample_mentions(suite: Suite):
    """The suite's mentions (seeded sample) and its KB, written once into the runs folder so
    that every run's process reads the same files."""
    from . import datasets
    from .kb import KnowledgeBase

    folder = suite.runs_dir
    folder.mkdir(parents=True, exist_ok=True)
    ds_conf = suite.dataset
    ds = datasets.load(suite.resolve(ds_conf["path"]), ds_conf.get("format", "auto"), ds_conf.get("split"))
    mentions = ds.valid
    size, seed = suite.sample.get("size"), suite.sample.get("seed", 0)
    if size and size < len(mentions):
        mentions = random.Random(seed).sample(mentions, size)
    if suite.kb:
        kb_path = suite.resolve(suite.kb)
        kb = KnowledgeBase.open(kb_path)
    else:
        if ds.kb is None:
            raise GenLinkerError(f"suite {suite.path}: the dataset carries no KB: give `kb`")
        kb_path = folder / "kb"
        if not (kb_path / "entities.jsonl").exists():
            ds.kb.save(kb_path)
        kb = KnowledgeBase.open(kb_path)
    missing = [m.id for m in mentions if m.gold is not None and m.gold not in kb]
    if missing:
        print(f"compare: warning: {len(missing)} sampled mention(s) have a gold id not in the KB "
              f"(e.g. {missing[0]}); they count as misses", file=sys.stderr)
    path = folder / "mentions.jsonl"
    if not path.exists() or path.read_text() != mentions_text(mentions):
        write_mentions(mentions, path)
    return mentions, kb_path, len(ds.valid), len(kb)


# Spec keys added since runs were committed whose defaults keep the old behaviour: a saved spec
# that lacks only these still describes the same linker. (Not, e.g., candidates.encoder_dtype,
# whose default `auto` changed how mentions are encoded.)
NEUTRAL_NEW_KEYS = {"rerank.judge", "rerank.judge_below", "rerank.judge_weight", "rerank.judge_candidates",
                    "rerank.judge_temperature", "rerank.judge_adapter"}


def same_spec(written: str | None, spec_text: str) -> bool:
    """Does a run's saved spec describe the linker `spec_text` does? A saved spec that lacks only
    keys of NEUTRAL_NEW_KEYS is read with their defaults filled in, so adding such a key does not
    make every committed run link again; any other missing key, a retired key or a changed
    value means linking again."""
    if written is None:
        return False
    if written == spec_text:
        return True
    from .spec import LinkerSpec, SpecError, _flatten

    try:
        old = yaml.safe_load(written) or {}
        if not set(_flatten(yaml.safe_load(spec_text), "spec")) - set(_flatten(old, "saved spec")) <= NEUTRAL_NEW_KEYS:
            return False
        return LinkerSpec.from_dict(old).to_yaml() == spec_text
    except (SpecError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return False


def artefact_stamp(spec) -> dict[str, list[int]]:
    """Per path the spec names (a trained adapter, a fusion folder, demonstrations...): its files'
    count, total size and latest modification time. Retraining an adapter in place leaves the
    spec's text as it was; this stamp is what tells compare that the run's output is stale."""
    from .spec import PATH_KEYS, _is_model_name

    stamp = {}
    for key in PATH_KEYS:
        value = spec.get(key)
        path = Path(value).expanduser() if value and not _is_model_name(key, value) else None
        if path is None or not path.exists():
            continue
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        stats = [f.stat() for f in files]
        stamp[key] = [len(stats), sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)]
    return stamp


def stale_artefacts(recorded: dict | None, stamp: dict) -> list[str]:
    """The spec keys whose files changed since a run recorded its stamp (none when it recorded
    none: a run written before stamps is kept, and stamped with the files as they are now)."""
    if recorded is None:
        return []
    return sorted(k for k in set(recorded) | set(stamp) if recorded.get(k) != stamp.get(k))


def run_one(suite: Suite, run: Run, kb_path: Path, mentions_path: Path, n_mentions: int,
            progress: bool = True) -> dict:
    """Link one run in a process of its own unless its predictions are complete; its metadata."""
    folder = suite.runs_dir
    out, meta_path, spec_path = folder / f"{run.name}.jsonl", folder / f"{run.name}.meta.json", folder / f"{run.name}.spec.yaml"
    spec_text = run.spec.to_yaml()
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    written = spec_path.read_text() if spec_path.exists() else None     # the spec the output was made with
    stamp = artefact_stamp(run.spec)
    stale = None
    if out.exists():
        changed = stale_artefacts(meta.get("artefacts"), stamp)
        stale = ("its spec" if not same_spec(written, spec_text) else
                 f"the files of {', '.join(changed)}" if changed else None)
    if stale:
        print(f"compare: {run.name}: {stale} changed since {out} was written: linking it again", file=sys.stderr)
        out.unlink()
        meta = {}
    done = sum(1 for _ in out.open()) if out.exists() else 0
    if done >= n_mentions and meta.get("complete"):
        if "artefacts" not in meta:              # written before stamps: trusted once, stamped from now on
            meta["artefacts"] = stamp
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        return meta
    spec_path.write_text(spec_text)
    meta_path.write_text(json.dumps({"artefacts": stamp, "complete": False}) + "\n")   # a resumed run checks it
    cmd = [sys.executable, "-m", "gen_linker.compare", str(spec_path), str(kb_path), str(mentions_path), str(out)]
    if not progress:
        cmd.append("--no-progress")
    print(f"compare: {run.name} ({run.spec.linker}) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise GenLinkerError(f"compare: run {run.name!r} failed (exit {proc.returncode}); its partial output "
                             f"{out} is kept and a rerun continues it")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = {**child, "spec": spec_text, "artefacts": stamp, "complete": True, "date": time.strftime("%Y-%m-%d")}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def worker(argv: Sequence[str]) -> int:
    """The child process of one run: load, link with resume, print timings as one JSON line."""
    import argparse
    import resource

    from .batch import link_to_file
    from .datasets.jsonl import read_mentions
    from .loader import load_linker

    ap = argparse.ArgumentParser(prog="gen_linker.compare")
    ap.add_argument("spec")
    ap.add_argument("kb")
    ap.add_argument("mentions")
    ap.add_argument("output")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    with open(args.mentions, "rb") as f:
        total = sum(1 for _ in f)
    out = Path(args.output)
    before = sum(1 for _ in out.open()) if out.exists() else 0
    t0 = time.perf_counter()
    linker = load_linker(args.kb, args.spec, n_mentions=total - before, progress=not args.no_progress)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = link_to_file(linker, read_mentions(args.mentions), out, chunk_size=max(64, 2 * getattr(linker, "batch_size", 8)),
                           resume=True, total=total, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    linked_now = total - summary.resumed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # kB -> GiB
    print(json.dumps({"startup_s": startup, "link_s": elapsed, "linked_now": linked_now,
                      "resumed": summary.resumed, "mentions_per_s": linked_now / elapsed if linked_now else None,
                      "peak_rss_gb": peak, "summary": summary.line()}))
    return 0


# ----------------------------------------------------------------------------- scoring
def correctness(predictions: dict[str, dict], mentions) -> np.ndarray:
    """1 where a mention's answer is its gold entity (NIL, errors and missing answers count 0)."""
    return np.array([float((predictions.get(m.id) or {}).get("entity_id") == m.gold) for m in mentions])


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0, n: int = BOOTSTRAP) -> dict[str, Any]:
    """Mentions only A gets right, only B, and a bootstrap 95% interval of Top-1(A) - Top-1(B)."""
    rng = np.random.default_rng(seed)
    diff = a - b
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    boots = diff[idx].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"only_a": int(((a == 1) & (b == 0)).sum()), "only_b": int(((a == 0) & (b == 1)).sum()),
            "diff": float(diff.mean()), "ci95": [float(low), float(high)]}


def calibration_error(predictions: dict[str, dict], mentions) -> float | None:
    """ECE of the answers' confidences (None when the linker gives none)."""
    from .fusion import expected_calibration_error

    conf, hit = [], []
    for m in mentions:
        p = predictions.get(m.id) or {}
        if p.get("confidence") is None:
            return None
        conf.append(p["confidence"] if p.get("entity_id") is not None else 0.0)
        hit.append(p.get("entity_id") == m.gold)
    return expected_calibration_error(conf, hit) if conf else None


def bootstrap_ci(hits: np.ndarray, seed: int = 0, n: int = BOOTSTRAP) -> list[float]:
    """95% bootstrap interval of a mean (Top-1 over mentions)."""
    if not len(hits):
        return [0.0, 0.0]
    idx = np.random.default_rng(seed).integers(0, len(hits), size=(n, len(hits)))
    return [float(x) for x in np.percentile(hits[idx].mean(axis=1), [2.5, 97.5])]


def compare(suite_path: str | Path, *, sample: int | None = None, only: Sequence[str] | None = None,
            out: str | Path | None = None, progress: bool = True, command: str | None = None) -> Path:
    """Run (or resume) a suite and write its table; the Markdown path."""
    from .evaluation import read_predictions, score
    from .hardware import machine_line
    from .loader import check_spec

    suite = load_suite(suite_path)
    if sample:
        suite.sample["size"] = sample
        suite.runs_dir = suite.runs_dir.with_name(f"{suite.runs_dir.name}-{sample}")
    runs = [r for r in suite.runs if not only or r.name in only]
    unknown = set(only or ()) - {r.name for r in suite.runs}
    if unknown:
        raise GenLinkerError(f"suite {suite.path} has no run(s) {', '.join(sorted(unknown))}")
    prepare(suite, progress)
    for run in runs:                                   # every spec sound before the first run starts
        check_spec(run.spec, f"suite {suite.path.name}, run {run.name!r}")
    mentions, kb_path, n_split, n_kb = sample_mentions(suite)
    gold = {m.id: m.gold for m in mentions if m.gold is not None}
    rows, right = [], {}
    for run in runs:
        meta = run_one(suite, run, kb_path, suite.runs_dir / "mentions.jsonl", len(mentions), progress)
        preds = read_predictions(suite.runs_dir / f"{run.name}.jsonl")
        scores = score(preds, gold)
        right[run.name] = correctness(preds, [m for m in mentions if m.gold is not None])
        rows.append({"run": run.name, "label": run.label, "group": run.group, "linker": run.spec.linker,
                     **scores.to_dict(), "top1_ci95": bootstrap_ci(right[run.name]),
                     "ece": calibration_error(preds, [m for m in mentions if m.gold is not None]),
                     "mentions_per_s": meta.get("mentions_per_s"),
                     "startup_s": meta.get("startup_s"), "peak_rss_gb": meta.get("peak_rss_gb"),
                     "measured": meta.get("date")})
        print(f"compare: {run.name}: {scores.table()}", file=sys.stderr, flush=True)
    pairs = []
    names = [r.name for r in runs]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs.append({"a": a, "b": b, **paired(right[a], right[b])})
    results = Path(out) if out else suite.results
    stem = suite.name if not sample else f"{suite.name}-{sample}"
    meta = {"suite": suite.name, "suite_file": str(suite.path), "command": command or f"gen-linker compare --suite {suite_path}",
            "machine": machine_line(), "date": time.strftime("%Y-%m-%d"), "mentions": len(mentions),
            "split_mentions": n_split, "kb_entities": n_kb, "sample": suite.sample, "dataset": suite.dataset}
    return write_table(results, stem, suite, meta, rows, pairs)


def write_table(folder: Path, stem: str, suite: Suite, meta: dict, rows: list[dict], pairs: list[dict]) -> Path:
    """`STEM.md` and `STEM.json`; a hand-written `## Reading` section of the Markdown survives."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "pairs": pairs}, indent=2) + "\n")
    md = folder / f"{stem}.md"
    reading = md.read_text().partition("\n## Reading")[2] if md.exists() else ""
    ds = suite.dataset
    lines = [f"# {suite.name}", ""] + ([suite.description.strip(), ""] if suite.description else []) + [
        f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
        f"- data: {ds.get('path')} split {ds.get('split')} ({meta['split_mentions']} mentions), "
        f"sample of {meta['mentions']} (seed {suite.sample.get('seed', 0)}); KB {meta['kb_entities']} entities",
        "- each run in a process of its own: mentions/s = linking only (after start-up); start-up = building the "
        "linker (models, indexes); peak RSS of the run's process; runs resumed from an earlier invocation show "
        "the figures of the invocation that linked them (column `measured`)", ""]
    head = ["run", *(["group"] if any(r["group"] for r in rows) else []), "linker", "Top-1", "95% interval",
            "Top-5", "Top-10",
            "MRR", "NIL", "errors", "ECE", "mentions/s", "start-up s", "peak RSS GB", "measured"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"] + (f" ({r['label']})" if r["label"] else "")]
        if "group" in head:
            cells.append(r["group"])
        low, high = r.get("top1_ci95") or (r["top1"], r["top1"])
        cells += [r["linker"], f"{r['top1']:.3f}", f"[{low:.3f}, {high:.3f}]", f"{r['top5']:.3f}", f"{r['top10']:.3f}", f"{r['mrr']:.3f}",
                  str(r["nil"]), str(r["errors"]), _num(r.get("ece"), 3), _num(r["mentions_per_s"], 2), _num(r["startup_s"], 1),
                  _num(r["peak_rss_gb"], 2), r.get("measured") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "## Paired comparison", "",
                  "Per pair: mentions A gets right and B wrong, the reverse, and the Top-1 difference A - B with "
                  f"its bootstrap 95% interval ({BOOTSTRAP} resamples of the mentions, seed 0).", "",
                  "| A | B | A right, B wrong | B right, A wrong | Top-1 A - B | 95% interval |", "|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['a']} | {p['b']} | {p['only_a']} | {p['only_b']} | {p['diff']:+.3f} | "
                         f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] |")
    if suite.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in suite.notes]
    text = "\n".join(lines) + "\n"
    if reading:
        text += "\n## Reading" + reading
    md.write_text(text)
    return md


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    try:
        raise SystemExit(worker(sys.argv[1:]))
    except (GenLinkerError, SpecError) as exc:
        print(f"gen-linker compare: error: {exc}", file=sys.stderr)
        raise SystemExit(1)
