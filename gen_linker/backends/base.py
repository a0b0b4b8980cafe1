"""The interface every generation backend implements (hf, vllm).

A prompt is either token ids or a `[seq, hidden]` tensor of input embeddings (text embeddings
with image soft-prefix vectors spliced in). The one operation the linker needs is a batched,
trie-constrained beam search that returns the top-k distinct names with their scores.
"""
from __future__ import annotations

from typing import Protocol, Sequence, Union

import torch

from ..beam import Hypothesis
from ..trie import Tries

Prompt = Union[Sequence[int], torch.Tensor]




class Backend(Protocol):
    name: str
    tokenizer: object
    default_batch_size: int   # prompts per call that keep this backend busy

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        """The LLM's input embeddings of `token_ids`, `[len, hidden]` (to build soft prompts)."""

    def constrained_beam_search(self, prompts: Sequence[Prompt], trie: Tries, num_beams: int,
                                top_k: int | None = None, max_new_tokens: int = 64) -> list[list[Hypothesis]]:
        """For each prompt, up to `top_k` (default `num_beams`) finished names, best first.
        `trie`: one for every prompt, or a list with one per prompt (`trie.Tries`)."""

    def constrained_greedy(self, prompts: Sequence[Prompt], trie: Tries,
                           max_new_tokens: int = 64) -> list[list[Hypothesis]]:
        """For each prompt, the greedy name under the trie (a list of one, or empty)."""


def end_token_for(tokenizer, name_end: str) -> int:
    """The trie's end token: the first token of the template's name separator (e.g. newline),
    as the demonstrations teach the LLM to write it after a name; EOS if there is none."""
    ids = tokenizer(name_end, add_special_tokens=False)["input_ids"] if name_end else []
    if ids:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token and the template no name_end")
    return int(tokenizer.eos_token_id)
