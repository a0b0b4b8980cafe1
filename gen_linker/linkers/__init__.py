"""The linker registry: a name in a spec -> the class that builds it (`from_spec(spec, parts)`).

Classes are named as "module:Class" and imported on first use, so `import gen_linker` stays
light and a linker's dependencies load only when it is asked for. Add one with `register`.

| name | what answers |
|---|---|
| `generative` | the LLM writes the entity name under a trie of the KB's names (GEMEL) |
| `dim` | DIM ranks retrieved candidates (a trained DIM folder) |
| `dwe` | DWE ranks retrieved candidates (a folder trained with `train-dim --arch dwe`) |
| `pipeline` | generative, with DIM deciding where the generation is unusable or unsure |
| `fused` | retrieval + trained rerankers (cross-encoder, task-tuned LLM, DIM) + features, fused by a model fitted on dev |
| `llm-choice` | an LLM (`--judge`, optionally LoRA-tuned: `--judge-adapter`) picks among the retriever's top C by letter (UniMEL) |
| `crossencoder` | a trained cross-encoder reorders the retrieved candidates |
| `dense` | dense retrieval alone (the spec's sentence encoder, e.g. a fine-tuned bi-encoder) |
| `retrieval` | the candidate retriever alone (BM25 over names + dense, rank-fused) |
| `bm25` | BM25 of the mention's words over names and aliases |
| `exact` | the entity whose name or alias equals the mention |
"""
from __future__ import annotations

import importlib

from .base import Linker, LinkerBase

LINKERS: dict[str, str] = {
    "generative": "gen_linker.linkers.generative:GenerativeLinker",
    "dim": "gen_linker.linkers.dim:DIMLinker",
    "dwe": "gen_linker.linkers.dwe:DWELinker",
    "pipeline": "gen_linker.linkers.pipeline:PipelineLinker",
    "fused": "gen_linker.linkers.fused:FusedLinker",
    "llm-choice": "gen_linker.linkers.choice:ChoiceLinker",
    "crossencoder": "gen_linker.linkers.fused:CrossEncoderLinker",
    "dense": "gen_linker.linkers.fused:DenseLinker",
    "retrieval": "gen_linker.linkers.baselines:RetrievalLinker",
    "bm25": "gen_linker.linkers.baselines:BM25NameLinker",
    "exact": "gen_linker.linkers.baselines:ExactNameLinker",
}


def register(name: str, target: str) -> None:
    """Make `name` a linker a spec can ask for; `target` is "package.module:Class"."""
    LINKERS[name] = target


def linker_class(name: str) -> type:
    """The class registered under `name`."""
    from ..spec import SpecError

    if name not in LINKERS:
        raise SpecError(f"unknown linker {name!r}: use one of {', '.join(LINKERS)}")
    module, _, cls = LINKERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["LINKERS", "Linker", "LinkerBase", "linker_class", "register"]
