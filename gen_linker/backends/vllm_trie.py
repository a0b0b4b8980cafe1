"""A vLLM v1 logits processor that confines gen-linker's requests to a name trie.

For a request that carries `extra_args["gen_linker_trie"]`, the row of logits becomes the
*raw* log-probabilities (log-softmax over the whole vocabulary, as the hf backend scores) at
the trie state's children and -inf everywhere else. With the engine's
`logprobs_mode="processed_logits"`, the log-probs vLLM returns are then exactly those scores:

- greedy mode: the request starts at a state and the processor follows the tokens it
  generates, so greedy decoding can only write a name; `logprobs=0` returns each chosen
  token's score.
- beam steps (`mark_end`): a request asks for one token; its top-k log-probs are the best
  children. The end token's value is raised by `END_MARK` so that it is always among them
  (the caller subtracts it): a parent's best `num_beams` tokens plus its end token are all
  that beam search can use, so asking for `num_beams + 1` loses nothing.

This replaces `allowed_token_ids` + `logprob_token_ids`, which stop at 128 ids (a KB's root has
thousands of first tokens), and `logprobs=-1`, which builds a vocabulary-sized dict per row.
The trie reaches the engine by its digest: from this module's registry when the engine runs
in this process, else from the `.npz` path in the request.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..trie import Trie

EXTRA_KEY = "gen_linker_trie"
END_MARK = 64.0

# Tries by digest, least recently registered first. Bounded: per-mention tries (candidates)
# would otherwise pile up; every call registers its tries right before its requests, and one
# call sends far fewer than this many, so a trie in use is never dropped.
_TRIES: OrderedDict[str, Trie] = OrderedDict()
MAX_TRIES = 4096


def register_trie(trie: Trie) -> str:
    """Make `trie` reachable by digest from an engine in this process."""
    _TRIES[trie.digest] = _TRIES.pop(trie.digest, trie)
    while len(_TRIES) > MAX_TRIES:
        _TRIES.popitem(last=False)
    return trie.digest


def _trie(digest: str, path: str | None) -> Trie:
    if digest not in _TRIES:
        if not path:
            raise ValueError(f"trie {digest} is not registered in the engine's process and no path was sent")
        register_trie(Trie.load(path))
    return _TRIES[digest]


@dataclass
class _Row:
    trie: Trie
    state: int
    mark_end: bool
    output: list[int] = field(default_factory=list)   # vLLM's live list of generated tokens
    consumed: int = 0

    def current_state(self) -> int:
        """Follow the tokens generated since the last step (greedy mode)."""
        while self.consumed < len(self.output):
            self.state = self.trie.step(self.state, self.output[self.consumed])
            self.consumed += 1
        return self.state


class TrieLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.device = device

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        args = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if args is not None and not (isinstance(args, dict) and "digest" in args and "state" in args):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] needs 'digest' and 'state', got {args!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    @staticmethod
    def _new_row(params, prompt_ids, output_ids) -> _Row | None:
        args = (params.extra_args or {}).get(EXTRA_KEY)
        if args is None:
            return None
        return _Row(_trie(args["digest"], args.get("path")), int(args["state"]),
                    bool(args.get("mark_end", False)), output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        batch_rows = sorted(r for r in self.rows if r < logits.shape[0])
        # Flat (row, token) pairs of every constrained row's allowed children.
        per_row = [self.rows[r].trie.allowed(self.rows[r].current_state()) for r in batch_rows]
        sizes = np.fromiter((len(t) for t in per_row), dtype=np.int64, count=len(per_row))
        local = torch.from_numpy(np.repeat(np.arange(len(batch_rows)), sizes)).to(logits.device)
        tokens = torch.from_numpy(np.concatenate(per_row).astype(np.int64)).to(logits.device)
        index = torch.tensor(batch_rows, dtype=torch.long, device=logits.device)

        logprobs = torch.log_softmax(logits[index].float(), dim=-1)
        masked = torch.full_like(logprobs, float("-inf"))
        masked[local, tokens] = logprobs[local, tokens]
        for i, r in enumerate(batch_rows):
            row = self.rows[r]
            if row.mark_end and row.trie.end_token in per_row[i]:
                masked[i, row.trie.end_token] += END_MARK
        logits[index] = masked.to(logits.dtype)
        return logits
