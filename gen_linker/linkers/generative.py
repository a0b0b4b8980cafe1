"""The generative linker (GEMEL): retrieved demonstrations in a prompt, and an LLM that writes
the entity name under a prefix-trie constraint, so every answer is a name of the KB.

One front door, ReFinED-style: `GenerativeLinker.from_pretrained(kb, ...)` then `link(mentions)`
or `process_text(text, mention)`, returning typed `LinkResult`s with scores and the top-k.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..backends import Backend, Hypothesis, Prompt, end_token_for, load_backend
from ..kb import KnowledgeBase
from ..prompting import DEFAULT_PROMPT, Demonstration, PromptTemplate
from ..demonstrations import DemoRetriever, demonstration_pool, make_retriever
from ..schema import Candidate, LinkResult, Mention
from ..soft_prompts import ImagePrefixer, block_token_starts, splice_images
from ..trie import Trie, Tries, name_trie, per_prompt
from .base import LinkerBase


SEARCHES = ("beam", "greedy")
TRIE_SCOPES = ("kb", "candidates", "candidates-then-kb")


def image_refs(mention: Mention, demos: Sequence[Demonstration], candidates: Sequence = ()) -> list[str | None]:
    """The image of each prompt block: none for the header, each demonstration's, none for the
    candidate block (when there is one), the query's."""
    return [None] + [d.image for d in demos] + ([None] if candidates else []) + [mention.image]


@dataclass
class GenerativeConfig:
    """Settings of the generative linker (the CLI flags of `gen-linker link` map onto these)."""

    num_demos: int = 16
    retriever: str = "simcse"         # simcse | bm25 | random | none
    search: str = "beam"              # beam | greedy (one name per mention; vLLM's fastest mode)
    num_beams: int = 5
    top_k: int | None = None          # names returned per mention; default num_beams
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 64
    max_prompt_tokens: int = 2048     # drop the least similar demonstrations beyond this
    batch_size: int | None = None     # prompts per backend call (sorted by length: less padding);
                                      # default: the backend's (hf 8, vllm 64)
    seed: int = 0
    candidates_in_prompt: int = 0     # c > 0: the top-c retrieved candidates + descriptions in the prompt
    trie_scope: str = "kb"            # kb | candidates (the trie holds only the prompt's candidates)
                                      # | candidates-then-kb (the KB's trie where the best candidate is unsure)
    retry_below: float = -3.0         # candidates-then-kb: retry over the KB below this score (nats)

    def to_dict(self) -> dict:
        return asdict(self)


class GenerativeLinker(LinkerBase):
    name = "generative"

    def __init__(self, kb: KnowledgeBase, backend: Backend, retriever: DemoRetriever,
                 config: GenerativeConfig | None = None, images: ImagePrefixer | None = None,
                 candidates=None, descriptions: Mapping[str, str] | None = None) -> None:
        """`candidates` (a `CandidateRetriever`) and `descriptions` (entity id -> text, instead
        of the KB's) serve `config.candidates_in_prompt`; the retriever is built when needed."""
        self.kb, self.backend, self.retriever, self.images = kb, backend, retriever, images
        self.config = config or GenerativeConfig()
        if self.config.search not in SEARCHES:
            raise ValueError(f"unknown search {self.config.search!r}: use one of {', '.join(SEARCHES)}")
        if self.config.trie_scope not in TRIE_SCOPES:
            raise ValueError(f"unknown trie scope {self.config.trie_scope!r}: use one of {', '.join(TRIE_SCOPES)}")
        if self.config.trie_scope != "kb" and self.config.candidates_in_prompt <= 0:
            raise ValueError(f"trie_scope {self.config.trie_scope!r} needs candidates_in_prompt > 0")
        self.descriptions = descriptions or {}
        self._candidates = candidates
        self.template = PromptTemplate.load(self.config.prompt)
        if self.config.candidates_in_prompt > 0:
            self.template.candidate_block([("x", "y")])   # fails early, naming the template
        self.end_token = end_token_for(backend.tokenizer, self.template.name_end)
        self._trie: Trie | None = None

    @classmethod
    def from_pretrained(cls, kb: KnowledgeBase | str | Path, llm: str | None = None, *,
                        backend: str | Backend = "hf", demos: Iterable[Mention] | None = None,
                        config: GenerativeConfig | None = None, encoder: str | None = None,
                        show_progress: bool = False, images: ImagePrefixer | None = None,
                        descriptions: Mapping[str, str] | None = None, candidates=None) -> "GenerativeLinker":
        """Build a linker: `kb` (object, folder or entities JSONL), the LLM by name or path,
        and optional training mentions with gold ids to retrieve demonstrations from."""
        config = config or GenerativeConfig()
        kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb)
        pool = demonstration_pool(demos or [], kb)
        kind = config.retriever if pool and config.num_demos > 0 else "none"
        retriever = make_retriever(kind, pool, encoder=encoder, seed=config.seed, show_progress=show_progress)
        engine = load_backend(backend, llm) if isinstance(backend, str) else backend
        return cls(kb, engine, retriever, config, images=images, candidates=candidates, descriptions=descriptions)

    @classmethod
    def from_spec(cls, spec, parts) -> "GenerativeLinker":
        """The generative linker of a `LinkerSpec` (`gen_linker.load_linker`), with the shared
        parts of the load: backend, sentence encoder, demonstrations, candidate retriever."""
        g = spec.generative
        prompt = "gemel_candidates" if g.candidates_in_prompt > 0 and g.prompt == DEFAULT_PROMPT else g.prompt
        pool = demonstration_pool(parts.demos, parts.kb)
        config = GenerativeConfig(num_demos=g.num_demos if parts.demos else 0, retriever=g.demo_retriever,
                                  search=g.search, num_beams=g.beams, top_k=spec.top_k, prompt=prompt,
                                  batch_size=g.batch_size, seed=g.seed, candidates_in_prompt=g.candidates_in_prompt,
                                  trie_scope=g.trie_scope, retry_below=g.retry_below)
        kind = config.retriever if pool and config.num_demos > 0 else "none"
        encoder = parts.similarity_encoder if kind == "simcse" else None
        retriever = make_retriever(kind, pool, encoder=encoder, seed=config.seed, show_progress=parts.progress)
        images = parts.adapter[0] if parts.adapter is not None else None
        candidates = parts.retriever if g.candidates_in_prompt > 0 else None
        return cls(parts.kb, parts.backend, retriever, config, images=images, candidates=candidates,
                   descriptions=parts.descriptions)

    def with_images(self, images: ImagePrefixer | None) -> "GenerativeLinker":
        """The same linker (backend, demonstrations, config, candidates) with another image
        prefixer: what mapper training and image benchmarks compare."""
        return type(self)(self.kb, self.backend, self.retriever, self.config, images=images,
                          candidates=self._candidates, descriptions=self.descriptions)

    @property
    def trie(self) -> Trie:
        """The KB's name trie for this LLM's tokenizer, built once and cached beside the KB."""
        if self._trie is None:
            self._trie = name_trie(self.kb.names(), self.backend.tokenizer, self.end_token,
                                   cache_dir=self.kb.cache_dir(), key=self.kb.fingerprint)
        return self._trie

    # ----------------------------------------------------------------------------- prompts
    def prompts(self, mentions: Sequence[Mention]) -> list[Prompt]:
        """Each mention's prompt with its retrieved demonstrations (and candidates, when the
        config asks for them): token ids, or embeddings with image soft prefixes where the
        linker has an image prefixer and there are images."""
        demos = self.retriever.retrieve(mentions, self.config.num_demos)
        cands = self.candidate_lists(mentions)
        return [self._prompt(m, d, c) for m, d, c in zip(mentions, demos, cands)]

    @property
    def candidates(self):
        """The candidate retriever of `candidates_in_prompt` (BM25 + dense), built on first use."""
        if self._candidates is None:
            from ..candidates import CandidateRetriever

            self._candidates = CandidateRetriever(self.kb, descriptions=self.descriptions)
        return self._candidates

    def description(self, entity_id: str) -> str | None:
        """The description the prompt shows for an entity (the linker's, else the KB's)."""
        return self.descriptions.get(entity_id, self.kb.get(entity_id).description)

    def candidate_lists(self, mentions: Sequence[Mention], k: int | None = None) -> list[list[tuple[str, str | None]]]:
        """Per mention, the (name, description) of its top-k (default `candidates_in_prompt`)
        retrieved distinct names, best first (entities sharing a name share a line)."""
        c = self.config.candidates_in_prompt if k is None else k
        if c <= 0:
            return [[] for _ in mentions]
        out = []
        for cands in self.candidates.retrieve(mentions, 3 * c):
            seen: dict[str, str | None] = {}
            for cand in cands:
                if len(seen) >= c and cand.name not in seen:
                    break
                seen.setdefault(cand.name, self.description(cand.entity_id))
            out.append(list(seen.items())[:c])
        return out

    def _prompt(self, mention: Mention, demos: list[Demonstration], cands: Sequence = ()) -> Prompt:
        ids, demos = self.prompt_ids(mention, demos, cands)
        refs = image_refs(mention, demos, cands)
        if self.images is None or not any(refs):
            return ids
        prefixes = self.images.prefixes(refs)
        if all(p is None for p in prefixes):
            return ids
        return self.with_prefixes(mention, demos, prefixes, cands)

    def with_prefixes(self, mention: Mention, demos: list[Demonstration], prefixes, cands: Sequence = ()) -> Prompt:
        """The prompt as embeddings with one prefix (or None) per block: header, demos, the
        candidate block if any, query. Differentiable in the prefixes: mapper training builds
        its prompts with this."""
        ids, starts = block_token_starts(self.backend.tokenizer,
                                         self.template.blocks(mention.text, mention.mention, demos, cands))
        return splice_images(self.backend.embed(ids), starts, prefixes)

    def prompt_ids(self, mention: Mention, demos: list[Demonstration],
                   cands: Sequence = ()) -> tuple[list[int], list[Demonstration]]:
        """Token ids of the text prompt and the demonstrations that fit in `max_prompt_tokens`."""
        tok = self.backend.tokenizer
        while True:
            ids = tok(self.template.render(mention.text, mention.mention, demos, cands))["input_ids"]
            if len(ids) <= self.config.max_prompt_tokens or not demos:
                return ids, demos
            demos = demos[1:]  # the least similar goes first

    # ----------------------------------------------------------------------------- linking
    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        """Link mentions, in order."""
        if self.config.trie_scope == "kb":
            return self.results(mentions, self.decode(self.prompts(mentions)))
        results = self._link_within_candidates(mentions)
        if self.config.trie_scope == "candidates-then-kb":
            results = self._retry_over_kb(mentions, results)
        return results

    def _link_within_candidates(self, mentions: Sequence[Mention],
                                cand_lists: Sequence[Sequence[tuple[str, str | None]]] | None = None,
                                exhaustive: bool = False) -> list[LinkResult]:
        """Each mention decoded under a trie of its own candidates' names; the mentions are
        still decoded in batches (the backends take one trie per prompt). `exhaustive`: the
        beam is as wide as the list, so every candidate name comes back with its exact score."""
        demos = self.retriever.retrieve(mentions, self.config.num_demos)
        cand_lists = self.candidate_lists(mentions) if cand_lists is None else cand_lists
        names = [[name for name, _ in cands] for cands in cand_lists]
        todo = [i for i, n in enumerate(names) if n]      # a mention without candidates gets no name
        tries = [name_trie(names[i], self.backend.tokenizer, self.end_token) for i in todo]
        width = max((len(names[i]) for i in todo), default=1) if exhaustive else None
        hyps = self.decode([self._prompt(mentions[i], demos[i], cand_lists[i]) for i in todo], tries,
                           num_beams=width, top_k=width)
        found = dict(zip(todo, hyps))
        return [self._result(m, found.get(i, []), names[i]) for i, m in enumerate(mentions)]

    def choose(self, mentions: Sequence[Mention], k: int | None = None) -> list[LinkResult]:
        """The LLM's choice among each mention's top-k retrieved candidates, every candidate
        scored (its summed log-probability after the prompt that lists them)."""
        return self._link_within_candidates(mentions, self.candidate_lists(mentions, k), exhaustive=True)

    def score_candidates(self, mentions: Sequence[Mention],
                         cand_lists: Sequence[Sequence[tuple[str, str | None]]]) -> list[dict[str, float]]:
        """Per mention, name -> the LLM's log-probability of that name after the prompt listing
        `cand_lists[i]` (every listed name scored exactly: one batched search, no sampling)."""
        results = self._link_within_candidates(mentions, cand_lists, exhaustive=True)
        return [{c.name: c.score for c in r.candidates} for r in results]

    def _retry_over_kb(self, mentions: Sequence[Mention], results: list[LinkResult]) -> list[LinkResult]:
        """Where the best candidate scores below `retry_below` (or none came out), decode again
        under the whole KB's trie with the same prompt, and keep the more probable answer."""
        low = [i for i, r in enumerate(results) if r.score is None or r.score < self.config.retry_below]
        if not low:
            return results
        again = self.results([mentions[i] for i in low], self.decode(self.prompts([mentions[i] for i in low])))
        out = list(results)
        for i, r in zip(low, again):
            if r.score is not None and (results[i].score is None or r.score > results[i].score):
                out[i] = r
        return out

    def results(self, mentions: Sequence[Mention], hyps: Sequence[list[Hypothesis]]) -> list[LinkResult]:
        """Decoded names as typed results: every entity of each name, best name first."""
        return [self._result(m, h) for m, h in zip(mentions, hyps)]

    @property
    def batch_size(self) -> int:
        return max(1, self.config.batch_size or getattr(self.backend, "default_batch_size", 8))

    def decode(self, prompts: Sequence[Prompt], trie: Tries | None = None, num_beams: int | None = None,
               top_k: int | None = None) -> list[list[Hypothesis]]:
        """Trie-constrained search over prompts (the KB's trie unless another is given, or one
        per prompt), results in input order. Prompts are grouped by length into batches of
        `batch_size` so that little is padding. `num_beams` / `top_k` override the config's."""
        tries = per_prompt(trie if trie is not None else self.trie, len(prompts))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[Hypothesis]] = [[] for _ in prompts]
        cfg = self.config
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch, batch_tries = [prompts[i] for i in chunk], [tries[i] for i in chunk]
            if cfg.search == "greedy":
                hyps = self.backend.constrained_greedy(batch, batch_tries, cfg.max_new_tokens)
            else:
                hyps = self.backend.constrained_beam_search(batch, batch_tries, num_beams or cfg.num_beams,
                                                            top_k or cfg.top_k, cfg.max_new_tokens)
            for i, h in zip(chunk, hyps):
                results[i] = h
        return results

    def _result(self, mention: Mention, hyps: list[Hypothesis], names: Sequence[str] | None = None) -> LinkResult:
        """`names`: what the hypotheses' values index (default: the KB's names, the KB trie's)."""
        names = self.kb.names() if names is None else names
        cands = [Candidate(eid, names[h.value], h.score)
                 for h in hyps for eid in self.kb.ids_for_name(names[h.value])]
        image_error = self.image_error(mention)
        if not cands:
            return LinkResult(mention.id, None, None, None, [], self.name, image_error=image_error)
        best = cands[0]
        from .fused import softmax_confidence

        # the best name's share of the returned names' probability (entities sharing it split it)
        names = {c.name: c.score for c in cands}
        share = softmax_confidence([best.score] + [s for n, s in names.items() if n != best.name])
        return LinkResult(mention.id, best.entity_id, best.name, best.score, cands, self.name,
                          image_error=image_error, confidence=share / max(1, len(self.kb.ids_for_name(best.name))))

    def image_error(self, mention: Mention) -> str | None:
        """Why the mention's own image was not used, if it has one that could not be read."""
        if self.images is None or not mention.image:
            return None
        err = self.images.errors.get(str(mention.image))
        return None if err is None else str(err)
