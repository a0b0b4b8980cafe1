"""A prefix trie over token ids, stored as flat arrays, for constrained decoding.

Like GENRE's `trie.py` it is model-agnostic (it only sees token ids) and can be handed to
generation as one callable; unlike it, it holds no nested dicts: nodes are numbered in
depth-first order and each node's children are a sorted slice of two int32 arrays (CSR), so a
million names cost tens of MB, not GBs, and the file cached on disk is a plain `.npz` that
`load` memory-maps (the processes of one machine share one copy).

A decoding *state* is a node id. `allowed(state)` and `step(state, token)` cost one array
slice and one binary search, so a beam pays O(1) per step instead of a walk from the root.
Each name ends in an end token (the template's separator or EOS); the node reached through it
is a leaf whose value is the name's index in the list the trie was built from.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .arrayfiles import load_arrays, save_arrays

ROOT = 0
DEAD = -1


class Trie:
    """Token prefix trie. Build with `Trie.build(sequences, end_token)`."""

    def __init__(self, child_start: np.ndarray, child_token: np.ndarray, child_node: np.ndarray,
                 leaf_node: np.ndarray, leaf_value: np.ndarray, end_token: int) -> None:
        self.child_start = child_start      # int64 [n_nodes + 1]: children of n are edges cs[n]:cs[n+1]
        self.child_token = child_token      # int32 [n_edges], sorted within each node
        self.child_node = child_node        # int32 [n_edges]
        self.leaf_node = leaf_node          # int32 [n_leaves], sorted: nodes reached by end_token
        self.leaf_value = leaf_value        # int32 [n_leaves]: index of the name in the build list
        self.end_token = int(end_token)
        self._end = np.array([self.end_token], dtype=np.int32)
        self._dead = np.array([DEAD], dtype=np.int32)
        self._digest: str | None = None

    # ----------------------------------------------------------------------------- build
    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], end_token: int) -> "Trie":
        """Build from token sequences (without the end token); value i is `sequences[i]`.

        Vectorised: sort the padded sequences, take the longest common prefix of neighbours,
        and every (row, depth) past it is a new node in depth-first order. Identical sequences
        share one leaf, whose value is the first of them.
        """
        n = len(sequences)
        if n == 0:
            raise ValueError("cannot build a trie from no sequences (is the knowledge base empty?)")
        lens = np.fromiter((len(s) + 1 for s in sequences), dtype=np.int64, count=n)
        width = int(lens.max())
        mat = np.full((n, width), -1, dtype=np.int32)          # -1 pads: a prefix sorts first
        for i, seq in enumerate(sequences):
            mat[i, : len(seq)] = seq
        mat[np.arange(n), lens - 1] = end_token
        order = np.lexsort(mat.T[::-1])                        # column 0 is the primary key
        mat, lens = mat[order], lens[order]

        # lcp[i]: length of the common prefix of sorted rows i-1 and i (rows are end-terminated,
        # so a row never is a strict prefix of another; equal rows get lcp = width).
        lcp = np.zeros(n, dtype=np.int64)
        if n > 1:
            differ = mat[1:] != mat[:-1]
            lcp[1:] = np.where(differ.any(axis=1), differ.argmax(axis=1), width)
        depth = np.arange(width)
        is_new = (depth[None, :] >= lcp[:, None]) & (depth[None, :] < lens[:, None])

        # Node ids 1..m in row-major order, which is depth-first order of the trie.
        ids = np.cumsum(is_new.ravel(), dtype=np.int64).reshape(n, width)
        ids = np.where(is_new, ids, -1)
        # The node on row i's path at depth d is the last one created at depth d up to row i.
        path = np.maximum.accumulate(ids, axis=0)
        parent = np.zeros_like(path)
        parent[:, 1:] = path[:, :-1]

        rows, cols = np.nonzero(is_new)                        # row-major: edges in dfs order
        edge_parent = parent[rows, cols]
        edge_token = mat[rows, cols]
        edge_child = ids[rows, cols]
        by_parent = np.argsort(edge_parent, kind="stable")     # siblings stay sorted by token
        n_nodes = int(ids.max()) + 1
        child_start = np.searchsorted(edge_parent[by_parent], np.arange(n_nodes + 1)).astype(np.int64)

        unique_rows = lcp < width
        last = lens - 1
        leaf_node = ids[np.arange(n), last][unique_rows]
        leaf_value = order[unique_rows]
        leaf_sort = np.argsort(leaf_node)
        return cls(
            child_start,
            edge_token[by_parent].astype(np.int32),
            edge_child[by_parent].astype(np.int32),
            leaf_node[leaf_sort].astype(np.int32),
            leaf_value[leaf_sort].astype(np.int32),
            end_token,
        )

    # ---------------------------------------------------------------------------- decode
    @property
    def n_nodes(self) -> int:
        return len(self.child_start) - 1

    def allowed(self, state: int) -> np.ndarray:
        """Token ids that may follow `state`; never empty (a finished or dead beam may only
        repeat the end token, which keeps HF's `prefix_allowed_tokens_fn` well defined)."""
        return self.children(state)[0]

    def children(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, next states) of `state`, aligned: what a beam needs to extend itself with
        no search at all. A finished or dead state has one child: the end token, to DEAD."""
        if state >= 0:
            lo, hi = self.child_start[state], self.child_start[state + 1]
            if hi > lo:
                return self.child_token[lo:hi], self.child_node[lo:hi]
        return self._end, self._dead

    def step(self, state: int, token: int) -> int:
        """The state after `token`, or DEAD if the token leaves the trie."""
        if state < 0:
            return DEAD
        lo, hi = int(self.child_start[state]), int(self.child_start[state + 1])
        tokens = self.child_token[lo:hi]
        k = int(np.searchsorted(tokens, token))
        if k < len(tokens) and tokens[k] == token:
            return int(self.child_node[lo + k])
        return DEAD

    def value(self, state: int) -> int:
        """The index of the name that ends at `state` (a leaf), or -1."""
        k = int(np.searchsorted(self.leaf_node, state))
        if state >= 0 and k < len(self.leaf_node) and self.leaf_node[k] == state:
            return int(self.leaf_value[k])
        return -1

    def walk(self, tokens: Sequence[int], state: int = ROOT) -> int:
        """Follow `tokens` from `state`; DEAD if they leave the trie."""
        for t in tokens:
            state = self.step(state, int(t))
            if state == DEAD:
                break
        return state

    def __call__(self, batch_id: int, prefix: Sequence[int]) -> list[int]:
        """GENRE-style callable for HF `prefix_allowed_tokens_fn`, given the generated ids only.

        Walks from the root (O(length)); the linker's own beam loop keeps states instead.
        """
        return self.allowed(self.walk(prefix)).tolist()

    def sequences(self) -> list[tuple[list[int], int]]:
        """Every (token sequence without end token, value) in the trie; for tests and debugging."""
        out: list[tuple[list[int], int]] = []
        stack: list[tuple[int, list[int]]] = [(ROOT, [])]
        while stack:
            node, prefix = stack.pop()
            lo, hi = self.child_start[node], self.child_start[node + 1]
            for tok, child in zip(self.child_token[lo:hi], self.child_node[lo:hi]):
                if tok == self.end_token and self.value(int(child)) >= 0:
                    out.append((prefix, self.value(int(child))))
                else:
                    stack.append((int(child), prefix + [int(tok)]))
        return out

    @property
    def digest(self) -> str:
        """A hash of the trie's contents: names a trie across processes (vLLM's engine)."""
        if self._digest is None:
            h = hashlib.sha256(str(self.end_token).encode())
            for a in (self.child_start, self.child_token, self.child_node, self.leaf_node, self.leaf_value):
                h.update(np.ascontiguousarray(a).data)
            self._digest = h.hexdigest()[:24]
        return self._digest

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.child_start, self.child_token, self.child_node,
                                      self.leaf_node, self.leaf_value))

    # --------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> None:
        """Write a plain uncompressed `.npz` (no pickle), atomically: `load` can map it."""
        save_arrays(path, {"child_start": self.child_start, "child_token": self.child_token,
                           "child_node": self.child_node, "leaf_node": self.leaf_node,
                           "leaf_value": self.leaf_value, "end_token": np.array(self.end_token)})

    @classmethod
    def load(cls, path: str | Path, mmap_mode: bool = True) -> "Trie":
        """A saved trie; memory-mapped by default, so that the processes of one machine that
        load the same KB's trie share its pages (a million names: tens of MB, once)."""
        z = load_arrays(path, mmap_mode=mmap_mode)
        return cls(z["child_start"], z["child_token"], z["child_node"], z["leaf_node"],
                   z["leaf_value"], int(z["end_token"]))


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes when the tokenizer would split names differently."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def tokenize_names(names: Sequence[str], tokenizer, batch_size: int = 10_000) -> list[list[int]]:
    """Token ids of each name as it appears right after the prompt's answer marker."""
    out: list[list[int]] = []
    for i in range(0, len(names), batch_size):
        enc = tokenizer(list(names[i : i + batch_size]), add_special_tokens=False)
        out.extend(enc["input_ids"])
    return out


def name_trie(names: Sequence[str], tokenizer, end_token: int,
              cache_dir: str | Path | None = None, key: str = "") -> Trie:
    """The trie of `names` for `tokenizer`, loaded from `cache_dir` when built before.

    `key` identifies the name list (the KB's fingerprint); the tokenizer and end token are
    added to the cache key here, so one KB folder can hold tries for several LLMs.
    """
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{key}|{tokenizer_fingerprint(tokenizer)}|{end_token}".encode())
        path = Path(cache_dir) / f"trie-{digest.hexdigest()[:20]}.npz"
        if path.exists():
            return Trie.load(path)
    trie = Trie.build(tokenize_names(names, tokenizer), end_token)
    if path is not None:
        try:
            trie.save(path)
        except OSError:
            pass  # a read-only cache only costs a rebuild next time
    return trie


Tries = Union[Trie, Sequence[Trie]]   # one trie for every prompt, or one per prompt


def per_prompt(tries: Tries, n_prompts: int) -> list[Trie]:
    """`tries` as a list with one trie per prompt."""
    if isinstance(tries, Trie):
        return [tries] * n_prompts
    tries = list(tries)
    if len(tries) != n_prompts:
        raise ValueError(f"{len(tries)} tries for {n_prompts} prompts: give one trie, or one per prompt")
    return tries
