"""`LinkerSpec`: every setting of a linker in one dataclass, readable from YAML and writable back.

What `gen-linker link` takes as flags, a suite takes as a YAML run and a Python user as a dict:
one spec, checked here before any model loads, so a typo fails in a second with a message
naming the key and its valid choices, not after a minute of loading. The linker itself is
built from a spec by `gen_linker.loader.load_linker`.

Layout (YAML; every key optional, the defaults are `gen-linker link`'s):

    linker: generative          # a registered linker (gen_linker.linkers.LINKERS)
    top_k: null                 # answers per mention (generative: the beams; others: 10)
    image_root: null            # folder that image paths in mentions are relative to
    backend:    {name: hf, llm: null, dtype: auto, vllm_compile: auto, kv_cache_gb: null}
    generative: {prompt: gemel, demos: null, num_demos: 16, demo_retriever: simcse, beams: 5, ...}
    candidates: {encoder: null, descriptions: null, count: 100, encoder_dtype: auto}
    dim:        {folder: null, captions: null, fuse_retrieval: false, regions: null}
    rerank:     {candidates: 20, crossencoder: null, llm: false, llm_candidates: 8, dim: false, fusion: null}
    pipeline:   {margin: 0.0}

Paths (`PATH_KEYS`) are relative to the YAML file's folder when read from one, and written
relative to the folder of a saved linker (`to_yaml(..., relative_to=...)`).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import GenLinkerError

BACKEND_NAMES = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16")
COMPILE = ("auto", "on", "off")
SEARCHES = ("beam", "greedy")
DEMO_RETRIEVERS = ("simcse", "bm25", "random")
TRIE_SCOPES = ("kb", "candidates", "candidates-then-kb")
SPLITS = ("train", "dev", "test")
DATA_FORMATS = ("auto", "melbench", "wikidiverse", "jsonl")


class SpecError(GenLinkerError):
    """A linker spec names an unknown key, a bad value, or a file that is not there."""


@dataclass
class BackendSpec:
    """The LLM and how it runs (generative and pipeline linkers)."""

    name: str = "hf"                   # hf (transformers) | vllm
    llm: str | None = None             # causal LM folder or hub id; None: packaged SmolLM2-135M-Instruct
    dtype: str = "auto"                # auto: bfloat16 where AMX runs it, else float32 (gen_linker.hardware)
    vllm_compile: str = "auto"         # vllm on a CPU: auto compiles from 500 mentions
    kv_cache_gb: float | None = None   # vllm on a CPU: KV cache size (default 2)


@dataclass
class GenerativeSpec:
    """The GEMEL prompt and the trie-constrained search."""

    prompt: str = "gemel"              # template name in prompts/ or a YAML path
    demos: str | None = None           # training mentions with gold ids (any supported format)
    demos_format: str = "auto"
    demos_split: str | None = None
    num_demos: int = 16
    demo_retriever: str = "simcse"     # simcse | bm25 | random
    search: str = "beam"               # beam | greedy
    beams: int = 5
    batch_size: int | None = None      # prompts per backend call (hf 8, vllm 64)
    candidates_in_prompt: int = 0      # top-C retrieved candidates with descriptions in the prompt
    trie_scope: str = "kb"             # kb | candidates | candidates-then-kb
    retry_below: float = -3.0          # candidates-then-kb: decode over the KB below this score (nats)
    seed: int = 0                      # the random demonstration retriever's
    adapter: str | None = None         # a trained image adapter folder (mapper, LoRA)


@dataclass
class CandidatesSpec:
    """Candidate retrieval (BM25 + dense, fused) and the sentence encoder it shares with the
    SimCSE demonstration retriever."""

    encoder: str | None = None         # sentence-transformers folder; None: packaged all-MiniLM-L6-v2
    descriptions: str | None = None    # entity descriptions JSONL used instead of the KB's; `none`: names only
    count: int = 100                   # candidates a reranker (DIM) ranks
    encoder_dtype: str = "auto"        # the sentence encoders' matmuls on mentions: float32, bfloat16 (autocast),
                                       # or auto: $GEN_LINKER_DTYPE if set, else bfloat16 with AMX (the default
                                       # linker 1.8x faster, the same answers: eval/results/encoder_dtype.md)


@dataclass
class DIMSpec:
    """A trained discriminative model (DIM or DWE: its card's `arch` decides) and its side files."""

    folder: str | None = None          # a trained DIM/DWE (gen-linker train-dim [--arch dwe])
    captions: str | None = None        # captions JSONL for DIM's expert features
    fuse_retrieval: bool = False       # final order: rank fusion of the model's and the retriever's
    regions: str | None = None         # DWE: regions JSONL ({image, boxes}) for image crops; else a grid


@dataclass
class RerankSpec:
    """Trained rerankers and their learned fusion (linkers crossencoder and fused)."""

    candidates: int = 20               # retrieved candidates a reranker / the fusion sees
    crossencoder: str | None = None    # a trained cross-encoder (gen-linker train-reranker)
    llm: bool = False                  # the generative LLM (its adapter) scores the top llm_candidates names
    llm_candidates: int = 8
    dim: bool = False                  # DIM's scores (dim.folder) as a fusion feature
    fusion: str | None = None          # a trained fusion model (gen-linker train-fusion)
    judge: str | None = None           # fused: an LLM folder that judges unsure answers (gen-linker get-judge)
    judge_below: float = 0.8           # ... the answers whose confidence is below this (chosen on dev)
    judge_weight: float = 3.0          # ... its letter log-probabilities' weight beside the fusion's (chosen on dev)
    judge_candidates: int = 5          # ... the fusion's best this many, as lettered options
    judge_temperature: float = 1.68    # ... of the judged answers' confidence (chosen on dev)
    judge_adapter: str | None = None   # the judge's trained LoRA (gen-linker train, task: judge); also llm-choice's


@dataclass
class PipelineSpec:
    margin: float = 0.0                # DIM also decides below this beam margin (nats)


@dataclass
class LinkerSpec:
    """Everything that decides what a linker answers (not how progress is shown)."""

    linker: str = "generative"
    top_k: int | None = None
    nil_threshold: float | None = None   # answers whose confidence is below this become NIL
    image_root: str | None = None
    backend: BackendSpec = field(default_factory=BackendSpec)
    generative: GenerativeSpec = field(default_factory=GenerativeSpec)
    candidates: CandidatesSpec = field(default_factory=CandidatesSpec)
    dim: DIMSpec = field(default_factory=DIMSpec)
    rerank: RerankSpec = field(default_factory=RerankSpec)
    pipeline: PipelineSpec = field(default_factory=PipelineSpec)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base_dir: str | Path | None = None,
                  source: str = "linker spec") -> "LinkerSpec":
        """A spec from nested dicts (or dotted keys, `generative.num_demos: 0`); relative paths
        resolved against `base_dir` when given. Unknown keys and bad values raise `SpecError`."""
        return cls().merged(data, base_dir=base_dir, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LinkerSpec":
        """A spec from a YAML file; its relative paths are relative to the file's folder."""
        path = Path(path)
        if not path.exists():
            raise SpecError(f"linker spec {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SpecError(f"linker spec {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise SpecError(f"linker spec {path} must be a mapping of keys to values")
        return cls.from_dict(data, base_dir=path.parent, source=str(path))

    def merged(self, overrides: Mapping[str, Any] | None, base_dir: str | Path | None = None,
               source: str = "linker spec") -> "LinkerSpec":
        """A copy with `overrides` (nested or dotted keys) applied on top."""
        data = to_dict(self)
        for key, value in _flatten(overrides or {}, source).items():
            _assign(data, key, value, source)
        spec = _build(LinkerSpec, data, "", source)
        if base_dir is not None:
            for key in PATH_KEYS:
                if key in _flatten(overrides or {}, source):
                    value = spec.get(key)
                    if value and not _is_model_name(key, value, base_dir):
                        spec.set(key, os.path.normpath(os.path.join(str(base_dir), os.path.expanduser(value))))
        spec.check_values(source)
        return spec

    # ------------------------------------------------------------------ access
    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def set(self, dotted: str, value: Any) -> None:
        *parents, last = dotted.split(".")
        obj: Any = self
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, value)

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self, path: str | Path | None = None, relative_to: str | Path | None = None) -> str:
        """The spec as YAML (written to `path` when given); with `relative_to`, paths are made
        relative to that folder (a saved linker's)."""
        data = to_dict(self)
        if relative_to is not None:
            for key in PATH_KEYS:
                value = self.get(key)
                if value and not _is_model_name(key, value):
                    section, _, name = key.rpartition(".")
                    target = data[section] if section else data
                    target[name] = os.path.relpath(os.path.abspath(value), os.path.abspath(relative_to))
        text = yaml.safe_dump(data, sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    # ------------------------------------------------------------------ checks
    def check_values(self, source: str = "linker spec") -> None:
        """Values against their choices and ranges (no file system, no registry)."""
        choices = {"backend.name": BACKEND_NAMES, "backend.dtype": DTYPES, "candidates.encoder_dtype": DTYPES,
                   "backend.vllm_compile": COMPILE,
                   "generative.search": SEARCHES, "generative.demo_retriever": DEMO_RETRIEVERS,
                   "generative.trie_scope": TRIE_SCOPES, "generative.demos_format": DATA_FORMATS,
                   "generative.demos_split": (None, *SPLITS)}
        for key, allowed in choices.items():
            if self.get(key) not in allowed:
                shown = ", ".join(str(a) for a in allowed if a is not None)
                raise SpecError(f"{source}: {key}: {self.get(key)!r} is not one of {shown}")
        for key in ("top_k", "generative.num_demos", "generative.beams", "generative.batch_size",
                    "generative.candidates_in_prompt", "candidates.count", "rerank.candidates",
                    "rerank.llm_candidates", "rerank.judge_candidates"):
            value = self.get(key)
            low = 0 if key in ("generative.num_demos", "generative.candidates_in_prompt") else 1
            if value is not None and value < low:
                raise SpecError(f"{source}: {key} must be at least {low}, not {value}")
        if not 0.0 <= self.rerank.judge_below <= 1.0:
            raise SpecError(f"{source}: rerank.judge_below must be a confidence in [0, 1], not {self.rerank.judge_below}")
        if self.rerank.judge_weight < 0:
            raise SpecError(f"{source}: rerank.judge_weight must be at least 0, not {self.rerank.judge_weight}")
        if self.rerank.judge_temperature <= 0:
            raise SpecError(f"{source}: rerank.judge_temperature must be above 0, not {self.rerank.judge_temperature}")
        if not 2 <= self.rerank.judge_candidates <= 10:
            raise SpecError(f"{source}: rerank.judge_candidates must be 2 to 10, not {self.rerank.judge_candidates}")
        if self.rerank.judge_adapter and not self.rerank.judge:
            raise SpecError(f"{source}: rerank.judge_adapter needs rerank.judge (--judge), the LLM it was trained on")
        t = self.nil_threshold
        if t is not None and not 0.0 <= t <= 1.0:
            raise SpecError(f"{source}: nil_threshold must be a confidence in [0, 1], not {t}")
        if self.generative.trie_scope != "kb" and self.generative.candidates_in_prompt <= 0:
            raise SpecError(f"{source}: generative.trie_scope {self.generative.trie_scope!r} needs "
                            "generative.candidates_in_prompt C > 0 (e.g. 10): the trie is built over the prompt's "
                            "candidates")

    def check_files(self, source: str = "linker spec") -> None:
        """Every file or folder the spec names exists (checked before any model loads)."""
        for key in PATH_KEYS:
            value = self.get(key)
            if value and not _is_model_name(key, value) and not Path(value).expanduser().exists():
                raise SpecError(f"{source}: {key}: {value} does not exist")


# Keys holding paths (made relative when a linker folder is saved). backend.llm and
# candidates.encoder are paths only when they name an existing folder (else a model name).
PATH_KEYS = ("image_root", "backend.llm", "generative.prompt", "generative.demos", "generative.adapter",
             "candidates.encoder", "candidates.descriptions", "dim.folder", "dim.captions", "dim.regions",
             "rerank.crossencoder", "rerank.fusion", "rerank.judge", "rerank.judge_adapter")
_MODEL_KEYS = {"backend.llm", "candidates.encoder", "generative.prompt", "rerank.judge"}


def _is_model_name(key: str, value: str, base_dir: str | Path | None = None) -> bool:
    """A model or template named by name (not a path), or a keyword: left as it is. A bare
    name that is a folder beside the spec (`base_dir`) is a path: a saved linker's tuned encoder
    is written as `biencoder`, and read from another working directory it must not be taken for
    a model name (which sentence-transformers would look up on the hub)."""
    if key == "candidates.descriptions":
        return value == "none"
    if key not in _MODEL_KEYS:
        return False
    if key == "generative.prompt":
        return not (value.endswith((".yaml", ".yml")) or os.sep in value)
    return not (os.sep in value or value.startswith(".") or Path(value).expanduser().is_dir()
                or (base_dir is not None and (Path(base_dir) / value).is_dir()))


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _flatten(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted keys as one level of dotted keys; sections stay mappings."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: {prefix.rstrip('.') or 'the spec'} must be a mapping, not {data!r}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and full in _SECTIONS:
            out.update(_flatten(value, source, full + "."))
        else:
            out[full] = value
    return out


def _section_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(LinkerSpec)
             if f.default_factory is not dataclasses.MISSING}


def _assign(data: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in _SECTIONS):
        raise SpecError(f"{source}: unknown key {dotted!r}; sections are {', '.join(_SECTIONS)}")
    if len(parts) == 1:
        top = {n for n in _section_fields(LinkerSpec) if n not in _SECTIONS}
        if parts[0] not in top:
            hint = [f"{s}.{parts[0]}" for s, cls in _SECTIONS.items() if parts[0] in _section_fields(cls)]
            raise SpecError(f"{source}: unknown key {dotted!r}" + (f" (did you mean {hint[0]}?)" if hint else "")
                            + f"; top-level keys are {', '.join(sorted(top | set(_SECTIONS)))}")
        data[parts[0]] = value
        return
    section, name = parts
    valid = _section_fields(_SECTIONS[section])
    if name not in valid:
        raise SpecError(f"{source}: unknown key {dotted!r}; keys of {section} are {', '.join(valid)}")
    data[section][name] = value


def _build(cls, data: Mapping[str, Any], prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in _section_fields(cls).items():
        value = data.get(name)
        if name in _SECTIONS and cls is LinkerSpec:
            kwargs[name] = _build(_SECTIONS[name], value or {}, f"{name}.", source)
        else:
            kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(value: Any, hint, key: str, source: str) -> Any:
    """`value` as the field's type (int, float, bool, str, optionally None), or `SpecError`."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise SpecError(f"{source}: {key} cannot be empty")
    if isinstance(hint, types.UnionType) or optional:
        hint = base
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, (str, Path))}.get(base, True)
    if not ok:
        raise SpecError(f"{source}: {key} must be {'a number' if base is float else base.__name__}, "
                        f"not {value!r}")
    if base is float:
        return float(value)
    if base is str:
        return str(value)
    return value
