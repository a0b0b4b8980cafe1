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
from ..datasets.spans import locate
from ..errors import RecordError
from ..kb import KnowledgeBase
from ..prompting import DEFAULT_PROMPT, Demonstration, PromptTemplate
from ..retrieval import DemoRetriever, demonstration_pool, make_retriever
from ..schema import Candidate, LinkResult, Mention
from ..soft_prompts import ImagePrefixer, block_token_starts, splice_images
from ..trie import Trie, Tries, name_trie, per_prompt


SEARCHES = ("beam", "greedy")
TRIE_SCOPES = ("kb", "candidates")


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

    def to_dict(self) -> dict:
        return asdict(self)


class GenerativeLinker:
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
        if self.config.trie_scope == "candidates" and self.config.candidates_in_prompt <= 0:
            raise ValueError("trie_scope 'candidates' needs candidates_in_prompt > 0")
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

    def candidate_lists(self, mentions: Sequence[Mention]) -> list[list[tuple[str, str | None]]]:
        """Per mention, the (name, description) of its top-c candidates, distinct names, best first."""
        c = self.config.candidates_in_prompt
        if c <= 0:
            return [[] for _ in mentions]
        out = []
        for cands in self.candidates.retrieve(mentions, c):
            seen: dict[str, str | None] = {}
            for cand in cands:
                desc = self.descriptions.get(cand.entity_id, self.kb.get(cand.entity_id).description)
                seen.setdefault(cand.name, desc)
            out.append(list(seen.items()))
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
        if self.config.trie_scope == "candidates":
            return self._link_within_candidates(mentions)
        return self.results(mentions, self.decode(self.prompts(mentions)))

    def _link_within_candidates(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        """Each mention decoded under a trie of its own candidates' names; the mentions are
        still decoded in batches (the backends take one trie per prompt)."""
        demos = self.retriever.retrieve(mentions, self.config.num_demos)
        cand_lists = self.candidate_lists(mentions)
        names = [[name for name, _ in cands] for cands in cand_lists]
        todo = [i for i, n in enumerate(names) if n]      # a mention without candidates gets no name
        tries = [name_trie(names[i], self.backend.tokenizer, self.end_token) for i in todo]
        hyps = self.decode([self._prompt(mentions[i], demos[i], cand_lists[i]) for i in todo], tries)
        found = dict(zip(todo, hyps))
        return [self._result(m, found.get(i, []), names[i]) for i, m in enumerate(mentions)]

    def results(self, mentions: Sequence[Mention], hyps: Sequence[list[Hypothesis]]) -> list[LinkResult]:
        """Decoded names as typed results: every entity of each name, best name first."""
        return [self._result(m, h) for m, h in zip(mentions, hyps)]

    @property
    def batch_size(self) -> int:
        return max(1, self.config.batch_size or getattr(self.backend, "default_batch_size", 8))

    def decode(self, prompts: Sequence[Prompt], trie: Tries | None = None) -> list[list[Hypothesis]]:
        """Trie-constrained search over prompts (the KB's trie unless another is given, or one
        per prompt), results in input order. Prompts are grouped by length into batches of
        `batch_size` so that little is padding."""
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
                hyps = self.backend.constrained_beam_search(batch, batch_tries, cfg.num_beams, cfg.top_k,
                                                            cfg.max_new_tokens)
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
        return LinkResult(mention.id, best.entity_id, best.name, best.score, cands, self.name,
                          image_error=image_error)

    def image_error(self, mention: Mention) -> str | None:
        """Why the mention's own image was not used, if it has one that could not be read."""
        if self.images is None or not mention.image:
            return None
        err = self.images.errors.get(str(mention.image))
        return None if err is None else str(err)

    def process_text(self, text: str, mention: str, start: int | None = None,
                     end: int | None = None, mention_id: str = "0") -> LinkResult:
        """Link one mention of `text` (its offsets are found when not given)."""
        if start is None or end is None:
            span = locate(text, mention)
            if span is None:
                raise RecordError(f"mention {mention!r} is not found in the text {text[:80]!r}")
            start, end = span
        return self.link([Mention(mention_id, text, mention, start, end)])[0]
