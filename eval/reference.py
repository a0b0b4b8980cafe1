"""Reference implementations the benchmarks compare against (not part of the library).

`NestedDictTrie` is GENRE's `trie.py` design: one Python dict per node, and a lookup walks
from the root for every call, as `prefix_allowed_tokens_fn` is called with the whole prefix.
`reference_link` links one mention at a time with plain `model.generate` beam search.
"""
from __future__ import annotations

from typing import Sequence


class NestedDictTrie:
    def __init__(self, sequences: Sequence[Sequence[int]] = ()) -> None:
        self.trie_dict: dict = {}
        for seq in sequences:
            self.add(seq)

    def add(self, sequence: Sequence[int]) -> None:
        node = self.trie_dict
        for tok in sequence:
            node = node.setdefault(tok, {})

    def get(self, prefix: Sequence[int]) -> list[int]:
        node = self.trie_dict
        for tok in prefix:
            node = node.get(tok)
            if node is None:
                return []
        return list(node.keys())


def reference_link(model, tokenizer, prompt_ids: list[int], trie: NestedDictTrie, end_token: int,
                   num_beams: int, max_new_tokens: int = 64) -> list[tuple[list[int], float]]:
    """One mention with HF `generate`: beam search, trie via prefix_allowed_tokens_fn, summed
    log-probs (length_penalty=0), the `num_beams` finished names best first."""
    import torch

    inp = torch.tensor([prompt_ids])
    n = len(prompt_ids)

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
        return trie.get(ids[n:].tolist()) or [end_token]

    out = model.generate(inp, attention_mask=torch.ones_like(inp), num_beams=num_beams,
                         num_return_sequences=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                         prefix_allowed_tokens_fn=allowed, eos_token_id=end_token,
                         pad_token_id=tokenizer.pad_token_id or end_token, length_penalty=0.0,
                         early_stopping=True, return_dict_in_generate=True, output_scores=True)
    results = []
    for seq, score in zip(out.sequences, out.sequences_scores):
        toks = seq[n:].tolist()
        if end_token in toks:
            toks = toks[: toks.index(end_token)]
        results.append((toks, float(score)))
    return results
