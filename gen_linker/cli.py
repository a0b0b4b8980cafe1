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
from .backends import BACKENDS
from .errors import GenLinkerError, RecordError
from .schema import Mention

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "wikimel_sample"
# From this many mentions, compiling the vLLM model on a CPU (~60 s) pays for itself
# (eval/results/backends.md: 2.32 -> 3.32 mentions/s).
COMPILE_FROM = 500


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
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("build-kb", help="build a KB folder (entities + caches) from an entities JSONL")
    b.add_argument("entities", type=Path)
    b.add_argument("folder", type=Path)
    b.set_defaults(func=cmd_build_kb)

    t = sub.add_parser("train", help="train an image-mapper adapter from a recipe (LLM and vision encoder frozen)")
    t.add_argument("--recipe", type=Path, required=True, help="adapters/NAME.yaml (see adapters/README.md)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    td = sub.add_parser("train-dim", help="train the DIM discriminative linker (N-pair loss, frozen encoders)")
    td.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    td.add_argument("--train", type=Path, required=True, help="training mentions with gold ids (any supported format)")
    td.add_argument("--train-split", choices=("train", "dev", "test"), help="split of --train (e.g. train)")
    td.add_argument("--dev", type=Path, help="dev mentions: Top-1 each epoch, the best epoch kept")
    td.add_argument("--dev-split", choices=("train", "dev", "test"), help="split of --dev")
    td.add_argument("--output", type=Path, required=True, help="folder for the trained DIM (and its checkpoints)")
    td.add_argument("--epochs", type=int, default=5)
    td.add_argument("--lr", type=float, default=1e-3)
    td.add_argument("--batch-size", type=int, default=64, help="mentions per step (each a negative for the others)")
    td.add_argument("--hard-negatives", type=int, default=8, help="retrieved non-gold candidates per mention")
    td.add_argument("--vision", default="none", help="vision encoder: none, random:SEED or a CLIP folder")
    td.add_argument("--image-root", type=Path, help="folder that image paths in the mentions are relative to")
    td.add_argument("--captions", type=Path, help="captions JSONL for the expert features ({id|image, caption, answer?})")
    td.add_argument("--descriptions", type=Path, help="entity descriptions JSONL ({id, description}) used "
                                                     "instead of the KB's (e.g. from gen-linker describe)")
    td.add_argument("--encoder", help="DIM's text encoder: a sentence-transformers folder (default: packaged "
                                      "all-MiniLM-L6-v2) or clip:FOLDER for a CLIP model's text tower")
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--no-progress", action="store_true", help="no progress bar")
    td.set_defaults(func=cmd_train_dim)

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
    _linker_args(ln)
    ln.add_argument("--resume", action="store_true", help="continue a killed run into the same --output")
    ln.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ln.set_defaults(func=cmd_link)

    e = sub.add_parser("eval", help="score link output against gold: Top-1/5/10, MRR, NIL, errors "
                                    "(links the gold mentions first when no --predictions are given)")
    e.add_argument("--predictions", type=Path, help="output JSONL of `gen-linker link` to score")
    _dataset_args(e, "--gold", help="mentions with gold ids (any supported format)")
    e.add_argument("--kb", type=Path, help="without --predictions: the KB to link the gold mentions to "
                                           "(default: the dataset's own KB)")
    e.add_argument("--output", type=Path, help="without --predictions: keep the link output here")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    _linker_args(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="link the bundled WikiMEL sample with the packaged models")
    d.add_argument("--limit", type=int, default=100, help="mentions to link (default 100; 0: all 300)")
    d.add_argument("--output", type=Path, help="also write the link output here")
    _linker_args(d)
    d.set_defaults(func=cmd_demo)
    return p


def _dataset_args(p: argparse.ArgumentParser, flag: str, help: str = "mentions: .jsonl, or a dataset file/folder") -> None:
    p.add_argument(flag, dest="input", type=Path, required=True, help=help)
    p.add_argument("--format", default="auto", choices=("auto", *datasets.FORMATS),
                   help="input format (default: detected)")
    p.add_argument("--split", choices=("train", "dev", "test"), help="split of a dataset with splits")


def _linker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("linker")
    g.add_argument("--linker", default="generative", choices=("generative", "dim", "pipeline", "exact", "bm25"),
                   help="generative (default), dim (discriminative), pipeline (generative, DIM as fallback), "
                        "or the exact / bm25 name baselines")
    g.add_argument("--dim", type=Path, help="--linker dim/pipeline: a trained DIM folder (gen-linker train-dim)")
    g.add_argument("--margin", type=float, default=0.0,
                   help="--linker pipeline: DIM also decides when the best generated name beats the next by "
                        "less than this many nats (choose it on dev: linkers.pipeline.tune_margin, as eval/bench_discriminative.py does; default 0: only "
                        "unusable or ambiguous generations fall back)")
    g.add_argument("--candidates", type=int, default=100, help="--linker dim: retrieved candidates ranked (default 100)")
    g.add_argument("--captions", type=Path, help="captions JSONL for DIM's expert features")
    g.add_argument("--fuse-retrieval", action="store_true",
                   help="dim/pipeline: final order = reciprocal-rank fusion of DIM's and the retriever's")
    g.add_argument("--descriptions", type=Path, help="entity descriptions JSONL ({id, description}) instead of the KB's")
    g.add_argument("--llm", help="causal LM folder or hub id (default: packaged SmolLM2-135M-Instruct)")
    g.add_argument("--backend", default="hf", choices=BACKENDS,
                   help="generation backend: hf (transformers, default) or vllm (batched, high throughput)")
    g.add_argument("--search", default="beam", choices=("beam", "greedy"),
                   help="beam (top-k names, default) or greedy (one name per mention; fastest on vllm)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="LLM weights: auto = bfloat16 where the CPU has AMX/AVX512-BF16 (fast; scores "
                        "vary ~1e-3 with batch padding), else float32 (bit-stable)")
    g.add_argument("--demos", type=Path, help="training mentions with gold ids, for in-context demonstrations")
    g.add_argument("--demos-format", default="auto", choices=("auto", *datasets.FORMATS))
    g.add_argument("--demos-split", choices=("train", "dev", "test"), help="split of --demos (e.g. train)")
    g.add_argument("--num-demos", type=int, default=16, help="demonstrations per prompt (default 16)")
    g.add_argument("--demo-retriever", default="simcse", choices=("simcse", "bm25", "random"),
                   help="how demonstrations are chosen (default simcse)")
    g.add_argument("--encoder", help="sentence-transformers model for simcse (default: packaged all-MiniLM-L6-v2)")
    g.add_argument("--beams", type=int, default=5, help="beam size (default 5)")
    g.add_argument("--top-k", type=int, help="candidates per mention (default: --beams)")
    g.add_argument("--batch-size", type=int, help="prompts per backend call (default: hf 8, vllm 64)")
    g.add_argument("--vllm-compile", default="auto", choices=("auto", "on", "off"),
                   help="vllm on CPU: torch.compile the model (about a minute more to start, ~1.4x faster); "
                        f"auto: on from {COMPILE_FROM} mentions (always on on a GPU)")
    g.add_argument("--kv-cache-gb", type=float, help="vllm on CPU: KV cache size in GiB (default 2)")
    g.add_argument("--prompt", default="gemel", help="prompt template name or YAML path (default gemel; "
                                                     "gemel_candidates with --candidates-in-prompt)")
    g.add_argument("--candidates-in-prompt", type=int, default=0, metavar="C",
                   help="put the top-C retrieved candidates (BM25 + dense) with their descriptions (the KB's, "
                        "or --descriptions) in the generative prompt (default 0: none; the design's C is 10)")
    g.add_argument("--trie-scope", default="kb", choices=("kb", "candidates"),
                   help="with --candidates-in-prompt: the trie over the whole KB (default) or only the prompt's "
                        "candidates")
    g.add_argument("--seed", type=int, default=0, help="seed of the random demo retriever")
    g.add_argument("--adapter", type=Path, help="a trained adapter folder: image soft prefixes (default LLM: its base)")
    g.add_argument("--image-root", type=Path, help="folder that image paths in the mentions are relative to")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------- commands
def cmd_convert(args) -> int:
    from .kb import write_entities

    ds = datasets.load(args.input, args.format, args.split)
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
    with path.open("w", encoding="utf-8") as f:
        for i, rec in enumerate(records, 1):
            data = rec.to_dict() if isinstance(rec, Mention) else error_record(rec, str(i))
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
            n += isinstance(rec, Mention)
    return n


def cmd_build_kb(args) -> int:
    from .kb import KnowledgeBase

    kb = KnowledgeBase.from_jsonl(args.entities)
    kb.save(args.folder)
    print(f"KB folder {args.folder}: {len(kb)} entities, {len(kb.names())} distinct names"
          + (f"; {len(kb.load_errors)} unreadable line(s) skipped" if kb.load_errors else ""))
    return 0


def cmd_link(args) -> int:
    from .batch import link_to_file
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
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


def vllm_compile(choice: str, n_mentions: int | None) -> bool | None:
    """`--vllm-compile` as the backend's `compile`: None leaves it to the backend (eager on a
    CPU, compiled on a GPU); auto compiles from COMPILE_FROM mentions."""
    if choice == "auto":
        return True if (n_mentions or 0) >= COMPILE_FROM else None
    return choice == "on"


def make_linker(args, kb, n_mentions: int | None = None):
    """The linker the flags ask for (`n_mentions`: how many it will link, when known)."""
    from .linkers.baselines import BM25NameLinker, ExactNameLinker

    if args.linker == "exact":
        return ExactNameLinker(kb)
    if args.linker == "bm25":
        return BM25NameLinker(kb, top_k=args.top_k or 10)
    from .annotations import read_descriptions

    descriptions = read_descriptions(args.descriptions) if args.descriptions else None
    if args.linker == "dim":
        return _dim_linker(args, kb, descriptions)
    if args.linker == "pipeline":
        from .linkers.pipeline import PipelineLinker

        dim = _dim_linker(args, kb, descriptions)   # its candidate retriever also serves the prompt's candidates
        return PipelineLinker(kb, _generative_linker(args, kb, n_mentions, descriptions, dim.retriever), dim,
                              margin=args.margin, top_k=args.top_k or 10)
    return _generative_linker(args, kb, n_mentions, descriptions)


def _generative_linker(args, kb, n_mentions: int | None, descriptions=None, candidates=None):
    from .backends import load_backend
    from .linkers.generative import GenerativeConfig, GenerativeLinker

    demos: list[Mention] = []
    if args.demos:
        demo_ds = datasets.load(args.demos, args.demos_format, args.demos_split)
        demos = demo_ds.valid
        unknown = sum(1 for m in demos if m.gold is not None and m.gold not in kb)
        if unknown:
            print(f"warning: {unknown} demonstration(s) in {args.demos} have a gold id that is not in "
                  "the KB and are not used", file=sys.stderr)
    prompt = args.prompt
    if args.candidates_in_prompt > 0 and prompt == "gemel":
        prompt = "gemel_candidates"
    if args.trie_scope == "candidates" and args.candidates_in_prompt <= 0:
        raise GenLinkerError("--trie-scope candidates needs --candidates-in-prompt C (e.g. 10)")
    config = GenerativeConfig(num_demos=args.num_demos if demos else 0, retriever=args.demo_retriever,
                              search=args.search, num_beams=args.beams, top_k=args.top_k, prompt=prompt,
                              batch_size=args.batch_size, seed=args.seed,
                              candidates_in_prompt=args.candidates_in_prompt, trie_scope=args.trie_scope)
    options = {"dtype": args.dtype}
    if args.backend == "vllm":
        options.update(compile=vllm_compile(args.vllm_compile, n_mentions), kv_cache_gb=args.kv_cache_gb)
    images, llm = None, args.llm
    if args.adapter:
        from .adapters import load_adapter, lora_folder

        images, card = load_adapter(args.adapter, args.image_root, kb.cache_dir())
        llm = _adapter_llm(args.llm, card, args.adapter)
        if lora_folder(args.adapter, card):
            options["lora"] = lora_folder(args.adapter, card)
    return GenerativeLinker.from_pretrained(kb, backend=load_backend(args.backend, llm, **options), demos=demos,
                                            config=config, encoder=args.encoder, images=images,
                                            descriptions=descriptions, candidates=candidates)


def _dim_linker(args, kb, descriptions=None):
    from .annotations import read_captions
    from .linkers.dim import DIMLinker

    if not args.dim:
        raise GenLinkerError("--linker dim needs --dim FOLDER (a DIM trained with gen-linker train-dim)")
    return DIMLinker.from_pretrained(args.dim, kb, image_root=args.image_root,
                                     captions=read_captions(args.captions) if args.captions else None,
                                     descriptions=descriptions, num_candidates=args.candidates, top_k=args.top_k or 10,
                                     fuse_retrieval=args.fuse_retrieval)


def _adapter_llm(asked: str | None, card: dict, folder: Path) -> str:
    """The adapter's base LLM, or the one asked for if it is the same model."""
    from .models import resolve_llm

    base = card.get("base_llm")
    if asked and base and resolve_llm(asked) != resolve_llm(base):
        raise GenLinkerError(f"adapter {folder} was trained on {base}, not {asked}: drop --llm or train for it")
    return asked or base


def cmd_train(args) -> int:
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
    from .adapters import vision_encoder
    from .annotations import read_captions, read_descriptions
    from .dim_training import DIMTrainConfig, train_dim
    from .kb import KnowledgeBase
    from .linkers.dim import DIMFeaturizer

    kb = KnowledgeBase.open(args.kb)
    train = datasets.load(args.train, "auto", args.train_split).valid
    dev = datasets.load(args.dev, "auto", args.dev_split).valid if args.dev else []
    vision = None if args.vision == "none" else vision_encoder(args.vision)
    descriptions = read_descriptions(args.descriptions) if args.descriptions else None
    featurizer = DIMFeaturizer(args.encoder, vision, args.image_root,
                               read_captions(args.captions) if args.captions else None, kb.cache_dir())
    config = DIMTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            hard_negatives=args.hard_negatives, seed=args.seed)
    model, report = train_dim(kb, train, dev, featurizer, config, args.output / "training", descriptions,
                              progress=not args.no_progress)
    card = {"text_encoder": args.encoder, "vision": None if args.vision == "none" else args.vision,
            "kb": str(args.kb), "train": str(args.train), "dev": str(args.dev) if args.dev else None,
            "descriptions": str(args.descriptions) if args.descriptions else None,
            "captions": str(args.captions) if args.captions else None, "training": vars(config),
            "epoch_loss": report.epoch_loss, "dev_top1": report.dev_top1, "best_epoch": report.best_epoch,
            "created": time.strftime("%Y-%m-%d %H:%M")}
    model.save(args.output, card)
    best = f", best dev Top-1 {max(report.dev_top1):.3f} (epoch {report.best_epoch + 1})" if report.dev_top1 else ""
    print(f"DIM {args.output}: loss {' -> '.join(f'{x:.3f}' for x in report.epoch_loss)}{best}")
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


def cmd_demo(args) -> int:
    """Link the bundled sample (300 WikiMEL test mentions, 2,000 train mentions as the
    demonstration pool, and the entities they name) and print accuracy and a few examples."""
    from .batch import link_to_file
    from .evaluation import gold_of, read_predictions, score
    from .kb import KnowledgeBase

    kb = KnowledgeBase.from_jsonl(SAMPLE_DIR / "entities.jsonl")
    test = datasets.load(SAMPLE_DIR / "test.jsonl").valid
    if args.limit:
        test = test[: args.limit]
    args.demos, args.demos_format, args.demos_split = SAMPLE_DIR / "train.jsonl", "jsonl", None
    print(f"gen-linker demo: {len(test)} WikiMEL test mentions, KB of {len(kb)} entities, "
          f"{args.num_demos} {args.demo_retriever} demonstrations from 2,000 train mentions, "
          f"linker {args.linker}", flush=True)
    linker = make_linker(args, kb, len(test))
    output = args.output or Path(os.environ.get("TMPDIR", "/tmp")) / f"gen-linker-demo-{os.getpid()}.jsonl"
    t0 = time.perf_counter()
    link_to_file(linker, test, output, chunk_size=_chunk_size(linker), overwrite=True, total=len(test),
                 progress=not args.no_progress)
    dt = time.perf_counter() - t0
    preds = read_predictions(output)
    scores = score(preds, gold_of(test))
    print(f"\n{scores.table()}\n{len(test) / dt:.2f} mentions/s")
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
