"""Generation backends: `hf` (transformers, the CPU default) and `vllm` (high throughput)."""
from __future__ import annotations

from .base import Backend, Hypothesis, Prompt, end_token_for

BACKENDS = ("hf", "vllm")


def load_backend(name: str, llm: str | None = None, **kwargs) -> Backend:
    """A backend by name, with the LLM resolved by `gen_linker.models.resolve_llm`.
    vLLM is imported only when asked for (the hf backend works without it), and its engine is
    started once per process: asking again with the same arguments returns the live one."""
    if name == "hf":
        from .hf import HFBackend

        return HFBackend(llm, **kwargs)
    if name == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend.shared(llm, **kwargs)
    raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "Hypothesis", "Prompt", "end_token_for", "load_backend", "BACKENDS"]
