"""gen-linker: multimodal entity linking, generative (GEMEL-style) and discriminative.

One front door for every linker:

    from gen_linker import load_linker
    linker = load_linker("kb.jsonl", {"linker": "generative", "generative": {"demos": "train.jsonl"}})
    results = linker.link(mentions)          # or linker.process_text(text, mention)

`spec` is a `LinkerSpec`, a dict of its keys, a YAML file or a saved linker folder; the
`gen-linker` command builds its linkers the same way.
"""
from .kb import KnowledgeBase
from .schema import Candidate, Entity, LinkResult, Mention

__version__ = "0.1.0"


def __getattr__(name: str):
    """`load_linker`, `save_linker` and `LinkerSpec` on first use (they pull in PyYAML only)."""
    if name in ("load_linker", "save_linker"):
        from . import loader

        return getattr(loader, name)
    if name == "LinkerSpec":
        from .spec import LinkerSpec

        return LinkerSpec
    raise AttributeError(f"module 'gen_linker' has no attribute {name!r}")


__all__ = ["Candidate", "Entity", "KnowledgeBase", "LinkResult", "LinkerSpec", "Mention", "load_linker",
           "save_linker", "__version__"]
