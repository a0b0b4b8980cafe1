"""The linker flags of `gen-linker link / eval / demo / compare / serve`, one per `LinkerSpec`
key, and their translation into a spec: the CLI holds no linker assembly of its own.

Every flag defaults to "not given", so that a flag overrides a spec read with
`--linker-config` and an absent one leaves it alone; the defaults shown are the spec's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .spec import (BACKEND_NAMES, COMPILE, DATA_FORMATS, DEMO_RETRIEVERS, DTYPES, SEARCHES, SPLITS, TRIE_SCOPES,
                   LinkerSpec)

# (flag, spec key, argparse options, help); the spec's default is appended to the help.
FLAGS: list[tuple[str, str, dict, str]] = [
    ("--linker", "linker", {}, "which linker (see gen_linker.linkers): generative, dim, pipeline (generative, DIM "
                               "as fallback), retrieval (the candidate retriever alone), or the exact / bm25 baselines"),
    ("--top-k", "top_k", {"type": int}, "answers per mention (generative: --beams; others: 10)"),
    ("--image-root", "image_root", {"type": Path}, "folder that image paths in the mentions are relative to"),
    ("--backend", "backend.name", {"choices": BACKEND_NAMES},
     "generation backend: hf (transformers) or vllm (batched, high throughput)"),
    ("--llm", "backend.llm", {}, "causal LM folder or hub id (default: packaged SmolLM2-135M-Instruct)"),
    ("--dtype", "backend.dtype", {"choices": DTYPES},
     "LLM weights: auto = $GEN_LINKER_DTYPE if set, else bfloat16 where measured faster at the same Top-1 "
     "(AMX; AVX512-BF16 on vllm only; eval/results/dtype.md), else float32"),
    ("--vllm-compile", "backend.vllm_compile", {"choices": COMPILE},
     "vllm on CPU: torch.compile the model (about a minute more to start, ~1.4x faster); auto: on from 500 "
     "mentions (always on on a GPU)"),
    ("--kv-cache-gb", "backend.kv_cache_gb", {"type": float}, "vllm on CPU: KV cache size in GiB (default 2)"),
    ("--prompt", "generative.prompt", {}, "prompt template name or YAML path (gemel_candidates with "
                                          "--candidates-in-prompt)"),
    ("--demos", "generative.demos", {"type": Path}, "training mentions with gold ids, for in-context demonstrations"),
    ("--demos-format", "generative.demos_format", {"choices": DATA_FORMATS}, "format of --demos"),
    ("--demos-split", "generative.demos_split", {"choices": SPLITS}, "split of --demos (e.g. train)"),
    ("--num-demos", "generative.num_demos", {"type": int}, "demonstrations per prompt"),
    ("--demo-retriever", "generative.demo_retriever", {"choices": DEMO_RETRIEVERS}, "how demonstrations are chosen"),
    ("--search", "generative.search", {"choices": SEARCHES},
     "beam (top-k names) or greedy (one name per mention; fastest on vllm)"),
    ("--beams", "generative.beams", {"type": int}, "beam size"),
    ("--batch-size", "generative.batch_size", {"type": int}, "prompts per backend call (default: hf 8, vllm 64)"),
    ("--candidates-in-prompt", "generative.candidates_in_prompt", {"type": int, "metavar": "C"},
     "put the top-C retrieved candidates (BM25 + dense) with their descriptions in the generative prompt "
     "(0: none; the design's C is 10)"),
    ("--trie-scope", "generative.trie_scope", {"choices": TRIE_SCOPES},
     "with --candidates-in-prompt: the trie over the whole KB, only the prompt's candidates, or the candidates "
     "first and the KB where the best candidate scores below --retry-below"),
    ("--retry-below", "generative.retry_below", {"type": float}, "candidates-then-kb: the score (nats) below "
                                                                 "which the KB's trie is tried"),
    ("--seed", "generative.seed", {"type": int}, "seed of the random demo retriever"),
    ("--adapter", "generative.adapter", {"type": Path},
     "a trained adapter folder: image soft prefixes (default LLM: its base)"),
    ("--encoder", "candidates.encoder", {}, "sentence-transformers model for SimCSE demonstrations and dense "
                                            "candidates (default: packaged all-MiniLM-L6-v2)"),
    ("--encoder-dtype", "candidates.encoder_dtype", {"choices": DTYPES},
     "the sentence encoders as they encode mentions (dense candidates, demonstrations, the pool's kNN): bfloat16 "
     "runs their matmuls under autocast (with AMX: the default linker 1.8x faster with the same answers on "
     "WikiMEL, eval/results/encoder_dtype.md); auto = $GEN_LINKER_DTYPE if set, else bfloat16 with AMX, else "
     "float32. What is cached (the KB's entity embeddings, the pool's) and DIM/DWE features are always float32"),
    ("--descriptions", "candidates.descriptions", {"type": Path},
     "entity descriptions JSONL ({id, description}) instead of the KB's; none: names only"),
    ("--candidates", "candidates.count", {"type": int}, "dim: retrieved candidates ranked"),
    ("--dim", "dim.folder", {"type": Path}, "dim/pipeline: a trained DIM folder (gen-linker train-dim)"),
    ("--captions", "dim.captions", {"type": Path}, "captions JSONL for DIM's expert features"),
    ("--fuse-retrieval", "dim.fuse_retrieval", {"action": "store_const", "const": True},
     "dim/pipeline: final order = reciprocal-rank fusion of DIM's and the retriever's"),
    ("--nil-threshold", "nil_threshold", {"type": float},
     "answers whose confidence (in [0, 1]) is below this become NIL"),
    ("--rerank-candidates", "rerank.candidates", {"type": int}, "crossencoder/fused: retrieved candidates reranked"),
    ("--crossencoder", "rerank.crossencoder", {"type": Path},
     "crossencoder/fused: a trained cross-encoder (gen-linker train-reranker --kind crossencoder)"),
    ("--llm-rerank", "rerank.llm", {"action": "store_const", "const": True},
     "fused (training): the generative LLM scores the top --llm-candidates names"),
    ("--llm-candidates", "rerank.llm_candidates", {"type": int}, "names listed in the LLM's prompt (fused)"),
    ("--dim-rerank", "rerank.dim", {"action": "store_const", "const": True},
     "fused (training): DIM's scores (--dim) as a feature"),
    ("--fusion", "rerank.fusion", {"type": Path}, "fused: a trained fusion model (gen-linker train-fusion)"),
    ("--judge", "rerank.judge", {"type": str},
     "fused (the default): an LLM, qwen2.5-coder-1.5b-instruct after gen-linker get-judge or a folder, asked a "
     "multiple-choice question over the best --judge-candidates when the fusion's confidence is below --judge-below; "
     "~15x slower (0.67 s per judged mention on 2 cores), more accurate (eval/results/wikimel_trained.md); "
     "llm-choice: the LLM that picks among the retriever's top --judge-candidates"),
    ("--judge-below", "rerank.judge_below", {"type": float},
     "fused: judge answers whose confidence is below this (chosen on dev: eval/results/judge_fit.md)"),
    ("--judge-weight", "rerank.judge_weight", {"type": float},
     "fused: weight of the judge's letter log-probabilities beside the fusion's (chosen on dev)"),
    ("--judge-candidates", "rerank.judge_candidates", {"type": int},
     "fused and llm-choice: options in the judge's question"),
    ("--judge-temperature", "rerank.judge_temperature", {"type": float},
     "fused: temperature of the judged answers' confidence (chosen on dev)"),
    ("--judge-adapter", "rerank.judge_adapter", {"type": str},
     "the judge's LoRA folder (gen-linker train --recipe adapters/wikimel-judge.yaml); fused and llm-choice; "
     "without --judge, the judge is the LLM its card names"),
    ("--margin", "pipeline.margin", {"type": float},
     "pipeline: DIM also decides when the best generated name beats the next by less than this many nats "
     "(choose it on dev: linkers.pipeline.tune_margin; 0: only unusable or ambiguous generations fall back)"),
]


def _dest(key: str) -> str:
    return "spec__" + key.replace(".", "__")


def add_linker_flags(p: argparse.ArgumentParser) -> None:
    """The linker flags, `--linker-config` and `--save-linker`, and `--no-progress`."""
    g = p.add_argument_group("linker (each flag overrides --linker-config)")
    g.add_argument("--linker-config", type=Path, metavar="DIR|YAML",
                   help="a saved linker folder (linker.yaml + artefacts) or a linker spec YAML")
    g.add_argument("--save-linker", type=Path, metavar="DIR",
                   help="also write the linker these flags describe as a saved linker folder")
    defaults = LinkerSpec()
    for flag, key, options, text in FLAGS:
        default = defaults.get(key)
        shown = "" if options.get("action") or default is None else f" (default: {default})"
        if "choices" not in options and "action" not in options:
            options = {"metavar": flag.lstrip("-").upper().replace("-", "_"), **options}
        g.add_argument(flag, dest=_dest(key), default=None, help=text + shown, **options)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def spec_from_args(args: argparse.Namespace, base: LinkerSpec | None = None) -> LinkerSpec:
    """The spec the flags describe: `--linker-config` (or `base`) with every given flag on top.
    Without either, the packaged default linker when `--linker` is not given, else that linker
    with `LinkerSpec`'s defaults. Relative paths stay relative to the working directory."""
    from .loader import default_spec, read_spec

    if getattr(args, "linker_config", None):
        spec = read_spec(args.linker_config)
    elif base is not None:
        spec = base
    else:
        spec = default_spec() if getattr(args, _dest("linker"), None) is None else LinkerSpec()
    overrides = {}
    for _, key, _, _ in FLAGS:
        value = getattr(args, _dest(key), None)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    if overrides.get("rerank.judge_adapter") and not (overrides.get("rerank.judge") or spec.get("rerank.judge")):
        from .judge import adapter_base_llm

        overrides["rerank.judge"] = adapter_base_llm(overrides["rerank.judge_adapter"])   # the LLM it was trained on
    return spec.merged(overrides, source="flags")
