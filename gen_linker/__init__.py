"""gen-linker: multimodal entity linking with a generative (GEMEL-style) linker.

Front door: `gen_linker.linkers.generative.GenerativeLinker.from_pretrained(kb, ...)`, then
`link(mentions)` or `process_text(text, mention)`; the `gen-linker` command wraps it.
"""
from .schema import Candidate, Entity, LinkResult, Mention

__version__ = "0.1.0"
__all__ = ["Candidate", "Entity", "LinkResult", "Mention", "__version__"]
