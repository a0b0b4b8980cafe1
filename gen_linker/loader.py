"""The front door: `load_linker(kb, spec)` builds any registered linker from a `LinkerSpec`.

Every way in (Python, the CLI, `compare`, the server, integrations, Ray workers) calls this, so
"the linker the CLI builds" is one function, not argparse. Parts that several linkers share
are built once per load by `LinkerParts` and handed down: one sentence encoder per model, one
candidate retriever, one backend, one demonstration pool. A spec is checked (keys, values,
files, the linker's own requirements) before any of them loads.

A saved linker folder is `linker.yaml` (the spec, paths relative to the folder) beside the
artefacts it names (a DIM folder, an adapter): `save_linker(spec, folder)` writes one, and
`load_linker(kb, folder)` gives back exactly the linker the spec gave.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from .errors import GenLinkerError
from .kb import KnowledgeBase
from .spec import LinkerSpec, SpecError

LINKER_FILE = "linker.yaml"
# The default linker: a saved linker folder inside the package (trained by adapters/default.yaml).
DEFAULT_LINKER = Path(__file__).resolve().parent / "data" / "linkers" / "default"
# From this many mentions, compiling the vLLM model on a CPU (~60 s) pays for itself
# (eval/results/backends.md: 2.32 -> 3.32 mentions/s).
COMPILE_FROM = 500


def default_spec() -> LinkerSpec:
    """The packaged default linker's spec (`LinkerSpec()`'s generative linker if it is absent)."""
    return read_spec(DEFAULT_LINKER) if (DEFAULT_LINKER / LINKER_FILE).exists() else LinkerSpec()


def read_spec(spec: LinkerSpec | Mapping[str, Any] | str | Path | None) -> LinkerSpec:
    """A spec from a `LinkerSpec`, a dict, a YAML file or a saved linker folder; None is the
    packaged default linker."""
    if spec is None:
        return default_spec()
    if isinstance(spec, LinkerSpec):
        return spec
    if isinstance(spec, Mapping):
        return LinkerSpec.from_dict(spec)
    path = Path(spec)
    if path.is_dir():
        if not (path / LINKER_FILE).exists():
            raise SpecError(f"{path} is not a saved linker folder (no {LINKER_FILE}); write one with "
                            "gen-linker link ... --save-linker DIR")
        path = path / LINKER_FILE
    return LinkerSpec.from_yaml(path)


def check_spec(spec: LinkerSpec, source: str = "linker spec") -> type:
    """Keys, values, files and the linker's own requirements, before any model loads; the
    linker class."""
    from .linkers import linker_class

    spec.check_values(source)
    cls = linker_class(spec.linker)
    spec.check_files(source)
    check = getattr(cls, "check_spec", None)
    if check is not None:
        check(spec, source)
    return cls


def load_linker(kb: KnowledgeBase | str | Path, spec: LinkerSpec | Mapping[str, Any] | str | Path | None = None,
                *, n_mentions: int | None = None, progress: bool = False):
    """The linker `spec` describes over `kb` (an entities JSONL file, a KB folder or a
    `KnowledgeBase`). `spec`: a `LinkerSpec`, a dict of its keys, a YAML file or a saved linker
    folder; None is the default linker. `n_mentions`: how many it will link, when known (the
    vLLM backend compiles for long runs)."""
    spec = read_spec(spec)
    cls = check_spec(spec)
    kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb)
    linker = cls.from_spec(spec, LinkerParts(kb, spec, n_mentions=n_mentions, progress=progress))
    return NilThreshold(linker, spec.nil_threshold) if spec.nil_threshold is not None else linker


class NilThreshold:
    """A linker whose answers below a confidence threshold become NIL (`nil_threshold`)."""

    def __init__(self, linker, threshold: float) -> None:
        self.linker, self.threshold = linker, threshold
        self.name = linker.name

    def __getattr__(self, attr: str):
        return getattr(self.linker, attr)

    def link(self, mentions):
        from .linkers.fused import nil_below

        return [nil_below(r, self.threshold) for r in self.linker.link(mentions)]

    def process_text(self, *args, **kwargs):
        from .linkers.fused import nil_below

        return nil_below(self.linker.process_text(*args, **kwargs), self.threshold)


class LinkerParts:
    """What the linkers of one load share, each built on first use."""

    def __init__(self, kb: KnowledgeBase, spec: LinkerSpec, n_mentions: int | None = None,
                 progress: bool = False) -> None:
        self.kb, self.spec, self.n_mentions, self.progress = kb, spec, n_mentions, progress
        self._encoders: dict[str, Any] = {}

    def sentence_encoder(self, name: str | None = None):
        """One `SentenceEncoder` per model of this load (`name` None: the packaged MiniLM)."""
        from .encoders import SentenceEncoder
        from .models import resolve_sentence_encoder

        path = resolve_sentence_encoder(name)
        if path not in self._encoders:
            self._encoders[path] = SentenceEncoder(path, dtype=self.spec.candidates.encoder_dtype)
        return self._encoders[path]

    @cached_property
    def descriptions(self) -> dict[str, str] | None:
        """Entity descriptions to use instead of the KB's (a file, or `none`: names only)."""
        from .annotations import descriptions_for

        return descriptions_for(self.spec.candidates.descriptions, self.kb)

    @cached_property
    def retriever(self):
        """The candidate retriever (BM25 over names + dense over name + description, fused).
        Its encoder: the spec's, else a trained DIM's text encoder where the spec uses one."""
        from .candidates import CandidateRetriever

        name = self.spec.candidates.encoder
        if name is None and self.dim_card is not None:
            text = self.dim_card.get("text_encoder")
            name = None if (text or "").startswith("clip:") else text
        return CandidateRetriever(self.kb, self.sentence_encoder(name), self.descriptions,
                                  show_progress=self.progress)

    @cached_property
    def crossencoder(self):
        """The spec's trained cross-encoder as a scorer of (mention, entity) pairs."""
        from .rerankers import CrossEncoderScorer

        return CrossEncoderScorer(self.spec.rerank.crossencoder, self.kb, self.descriptions)

    @cached_property
    def pool(self):
        """The demonstration pool as fusion features see it (counts, surface forms, kNN), or
        None without demonstrations."""
        from .features import DemoPool

        usable = [m for m in self.demos if m.gold in self.kb]
        return DemoPool(usable, self.similarity_encoder) if usable else None

    @property
    def similarity_encoder(self):
        """The encoder of sentence-to-sentence similarity (SimCSE demonstrations, kNN over the
        pool): the spec's, unless that is a bi-encoder trained for mention-to-entity retrieval,
        then the packaged MiniLM."""
        from .rerankers import is_reranker_folder

        name = self.spec.candidates.encoder
        return self.sentence_encoder(None if name and is_reranker_folder(name) else name)

    @cached_property
    def dim_card(self) -> dict | None:
        """The card of the spec's DIM folder, if it names one."""
        import yaml

        folder = self.spec.dim.folder
        if not folder or not (Path(folder) / "dim.yaml").exists():
            return None
        return yaml.safe_load((Path(folder) / "dim.yaml").read_text())

    @cached_property
    def demos(self):
        """The demonstration mentions (with gold ids) the spec names, [] when none; those whose
        gold is not in the KB are left out with a warning."""
        from . import datasets

        g = self.spec.generative
        if not g.demos:
            return []
        demos = datasets.load(g.demos, g.demos_format, g.demos_split).valid
        unknown = sum(1 for m in demos if m.gold is not None and m.gold not in self.kb)
        if unknown:
            print(f"warning: {unknown} demonstration(s) in {g.demos} have a gold id that is not in "
                  "the KB and are not used", file=sys.stderr)
        return demos

    @cached_property
    def adapter(self):
        """(ImagePrefixer, card) of the spec's image adapter, or None."""
        from .adapters import load_adapter

        if not self.spec.generative.adapter:
            return None
        return load_adapter(self.spec.generative.adapter, self.spec.image_root, self.kb.cache_dir())

    @cached_property
    def backend(self):
        """The LLM backend (with the adapter's LoRA when it has one)."""
        from .adapters import lora_folder
        from .backends import load_backend

        b = self.spec.backend
        options: dict[str, Any] = {"dtype": b.dtype}
        if b.name == "vllm":
            options.update(compile=vllm_compile(b.vllm_compile, self.n_mentions), kv_cache_gb=b.kv_cache_gb)
        llm = b.llm
        if self.adapter is not None:
            _, card = self.adapter
            llm = adapter_llm(b.llm, card, self.spec.generative.adapter)
            lora = lora_folder(self.spec.generative.adapter, card)
            if lora:
                options["lora"] = lora
        return load_backend(b.name, llm, **options)


def vllm_compile(choice: str, n_mentions: int | None) -> bool | None:
    """`vllm_compile` as the backend's `compile`: None leaves it to the backend (eager on a
    CPU, compiled on a GPU); auto compiles from COMPILE_FROM mentions."""
    if choice == "auto":
        return True if (n_mentions or 0) >= COMPILE_FROM else None
    return choice == "on"


def adapter_llm(asked: str | None, card: dict, folder: str | Path) -> str | None:
    """The adapter's base LLM, or the one asked for if it is the same model."""
    from .models import resolve_llm

    base = card.get("base_llm")
    if asked and base and resolve_llm(asked) != resolve_llm(base):
        raise GenLinkerError(f"adapter {folder} was trained on {base}, not {asked}: drop the LLM setting "
                             "or train the adapter for it")
    return asked or base


# ------------------------------------------------------------------------ saved folders
# Artefact folders a saved linker carries (spec key -> folder name inside it, what to copy).
_RERANKER_FILES = ("reranker.yaml", "adapter_config.json", "adapter_model.safetensors", "config.json",
                   "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json", "modules.json", "config_sentence_transformers.json",
                   "sentence_bert_config.json", "1_Pooling", "2_Normalize")
ARTEFACTS = {"dim.folder": ("dim", ("dim.yaml", "dim.safetensors")),
             "candidates.encoder": ("biencoder", _RERANKER_FILES),
             "generative.adapter": ("adapter", ("adapter.yaml", "mapper", "lora")),
             "rerank.crossencoder": ("crossencoder", _RERANKER_FILES),
             "rerank.fusion": ("fusion", ("fusion.yaml", "fusion.safetensors")),
             "rerank.judge_adapter": ("judge_adapter", ("judge.yaml", "lora"))}


def warm_caches(linker, kb: KnowledgeBase) -> None:
    """Link one mention (a name of the KB) so that every cache the linker builds on first use
    (BM25 matrix, name trie, entity embeddings, an ANN index) exists now, in the KB's cache
    folder, and not at the first real mention (`build-kb --prepare`, `adapt`)."""
    from .schema import Mention

    name = kb.names()[0]
    linker.link([Mention(id="prepare", text=name, mention=name, start=0, end=len(name))])


def save_linker(spec: LinkerSpec, folder: str | Path, extra: Mapping[str, str | Path] | None = None,
                bundle: Mapping[str, str] | None = None) -> Path:
    """Write a saved linker folder: the spec's trained artefacts (a DIM, an adapter) copied in,
    and `linker.yaml` with every path relative to the folder. Data files the spec names (demos,
    descriptions, captions) are referenced, not copied. `extra`: more files or folders to copy
    in (name inside the folder -> source), for linkers with artefacts of their own. `bundle`:
    data files the spec names that are copied in too (spec key -> name inside the folder), for a
    folder that must stand alone (`gen-linker adapt`'s examples).
    Written to a temporary folder first, then moved: a killed save leaves no half folder."""
    check_spec(spec)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        saved = LinkerSpec.from_dict(spec.to_dict())
        for key, (name, parts) in ARTEFACTS.items():
            source = spec.get(key)
            if not source or not Path(source).is_dir():     # unset, or a model named by name
                continue
            target = tmp / name
            target.mkdir()
            for part in parts:
                src = Path(source) / part
                if src.is_dir():
                    shutil.copytree(src, target / part)
                elif src.exists():
                    shutil.copy2(src, target / part)
            saved.set(key, str(folder / name))
        for key, name in (bundle or {}).items():
            source = spec.get(key)
            if source:
                extra = {**(extra or {}), name: source}
                saved.set(key, str(folder / name))
        for name, source in (extra or {}).items():
            copy = shutil.copytree if Path(source).is_dir() else shutil.copy2
            copy(source, tmp / name)
        saved.to_yaml(tmp / LINKER_FILE, relative_to=folder)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
