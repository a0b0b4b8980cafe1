"""Mention detection for raw text: a longest-match gazetteer over the KB's names and aliases.

What `gen-linker link --detect`, the server's `/v1/detect` and REL's entity-linking mode (a
request without spans) use to find what to link. It finds only surface forms the KB knows, so
its recall is bounded by how often a text names an entity the way the KB does (measured on
WikiMEL in `eval/results/detect.md`); a linker then decides which entity each span means.

How a match is found:
- **Words, not characters.** Text and names are split into word tokens (`\\w+`, Unicode), so a
  match starts and ends on a word boundary: "Paris" is found in "Paris's" but not in "Parisian".
  The characters between a match's words must equal the name's (whitespace runs count as one
  space), so "AC/DC" does not match "AC DC" and "Paris, Texas" does not match "Paris Texas".
- **Surface forms.** Each entity's name and aliases, and each of them without a trailing
  Wikipedia disambiguator ("Danny Graham (footballer)" is found as "Danny Graham"); forms
  with fewer than two word characters are left out (every "A" or "I" would match).
- **Leftmost-longest.** Scanning left to right, the longest form starting at a word wins
  ("Paris Hilton" over "Paris"), and the scan resumes after it: spans never overlap.
- **Case** (`case=`): `smart` (the default) accepts a match whose text is written exactly as
  the form, or differs only in case while holding at least one capital letter ("PARIS HILTON",
  "Van Nistelrooy" for "van Nistelrooy"), and refuses an all-lowercase text span for a form
  that has capitals ("may", "christian", "jubilee" are ordinary words far more often than
  entities). `exact` needs the form's exact case; `ignore` ignores case entirely (highest
  recall, many false hits on KB names that are common words). `eval/bench_detect.py`
  measures all three.

The word trie is one flat dict `(node, casefolded word) -> node`, built once per KB and kept
for the KB's lifetime.
"""
from __future__ import annotations

import json
import re
import weakref
from pathlib import Path
from typing import Iterable, Iterator

from .errors import GenLinkerError, RecordError
from .kb import KnowledgeBase
from .schema import Mention

CASE_MODES = ("smart", "exact", "ignore")
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
_DISAMBIGUATOR = re.compile(r"\s*\([^()]*\)\s*$")
_MIN_WORD_CHARS = 2


def _norm(surface: str) -> str:
    """Whitespace runs as one space (how two separators are compared)."""
    return _SPACES.sub(" ", surface)


def surface_forms(name: str) -> set[str]:
    """The strings a name is found as: itself and, for a Wikipedia title with a trailing
    disambiguator, the title without it."""
    forms = {name.strip()}
    bare = _DISAMBIGUATOR.sub("", name).strip()
    if bare:
        forms.add(bare)
    return {f for f in forms if sum(len(w) for w in _WORD.findall(f)) >= _MIN_WORD_CHARS}


class Gazetteer:
    """The surface forms of a KB in a word trie; `find(text)` gives leftmost-longest matches."""

    def __init__(self, forms: Iterable[str]) -> None:
        self._edges: dict[tuple[int, str], int] = {}
        # node -> {normalised form between its first and last word: (leading, trailing) punctuation}
        self._ends: dict[int, dict[str, tuple[str, str]]] = {}
        self._nodes = 1
        for form in forms:
            self._add(form)

    @classmethod
    def from_kb(cls, kb: KnowledgeBase) -> "Gazetteer":
        return cls(form for ent in kb for name in (ent.name, *ent.aliases) for form in surface_forms(name))

    def __len__(self) -> int:
        return sum(len(v) for v in self._ends.values())

    def _add(self, form: str) -> None:
        words = list(_WORD.finditer(form))
        if not words:
            return
        node = 0
        for w in words:
            key = (node, w.group().casefold())
            nxt = self._edges.get(key)
            if nxt is None:
                nxt = self._edges[key] = self._nodes
                self._nodes += 1
            node = nxt
        first, last = words[0].start(), words[-1].end()
        core = _norm(form[first:last])
        self._ends.setdefault(node, {})[core] = (form[:first].strip(), form[last:].strip())

    def find(self, text: str, case: str = "smart") -> list[tuple[int, int, str]]:
        """(start, end, surface) of every match in `text`, leftmost-longest, not overlapping."""
        if case not in CASE_MODES:
            raise GenLinkerError(f"unknown case mode {case!r}: use one of {', '.join(CASE_MODES)}")
        words = list(_WORD.finditer(text))
        folded = [w.group().casefold() for w in words]
        out: list[tuple[int, int, str]] = []
        i = 0
        while i < len(words):
            best: tuple[int, int, int] | None = None     # (start, end, index of the last word)
            node = 0
            for j in range(i, len(words)):
                node = self._edges.get((node, folded[j]), -1)
                if node < 0:
                    break
                forms = self._ends.get(node)
                if forms:
                    span = self._accept(text, words[i].start(), words[j].end(), forms, case)
                    if span is not None:
                        best = (*span, j)
            if best is None:
                i += 1
                continue
            start, end, j = best
            out.append((start, end, text[start:end]))
            i = j + 1
            while i < len(words) and words[i].start() < end:   # trailing punctuation took a word's place
                i += 1
        return out

    @staticmethod
    def _accept(text: str, start: int, end: int, forms: dict[str, tuple[str, str]],
                case: str) -> tuple[int, int] | None:
        """The span of the form written at text[start:end] under the case rule (widened by the
        form's own leading/trailing punctuation where the text has it), or None."""
        seen = _norm(text[start:end])
        exact = forms.get(seen)
        for core, (lead, trail) in ([(seen, exact)] if exact is not None else forms.items()):
            if exact is None:
                if case == "exact" or seen.casefold() != core.casefold():
                    continue
                if case == "smart" and core != core.lower() and seen == seen.lower():
                    continue
            s, e = start, end
            if trail and text.startswith(trail, e):
                e += len(trail)
            if lead and text.endswith(lead, 0, s):
                s -= len(lead)
            return s, e
        return None


_GAZETTEERS: "weakref.WeakKeyDictionary[KnowledgeBase, Gazetteer]" = weakref.WeakKeyDictionary()


def gazetteer_for(kb: KnowledgeBase) -> Gazetteer:
    """The KB's gazetteer, built on first use and kept while the KB lives."""
    gaz = _GAZETTEERS.get(kb)
    if gaz is None:
        gaz = _GAZETTEERS[kb] = Gazetteer.from_kb(kb)
    return gaz


def detect_mentions(text: str, kb: KnowledgeBase | Gazetteer, case: str = "smart") -> list[tuple[int, int, str]]:
    """(start, end, surface) of each mention of a KB name or alias in `text`, in text order,
    leftmost-longest, word-boundary aware (see the module docstring for the case rule)."""
    gaz = kb if isinstance(kb, Gazetteer) else gazetteer_for(kb)
    return gaz.find(text, case)


# ------------------------------------------------------------------ raw text input (link --detect)
def read_texts(path: str | Path) -> Iterator[dict | RecordError]:
    """Raw text records of a JSONL file, `{"id", "text", "image"?}` per line, each as a dict
    (id defaulting to the line number) or the RecordError saying why it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise GenLinkerError(f"input {path} does not exist or is not a file")
    return _text_records(path)


def _text_records(path: Path) -> Iterator[dict | RecordError]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                data = json.loads(line)
            except ValueError as exc:
                yield RecordError(f"malformed JSON ({exc.args[0] if exc.args else exc})", source=str(path),
                                  line=lineno)
                continue
            rid = data.get("id") if isinstance(data, dict) else None
            rid = str(rid) if rid is not None else str(lineno)
            if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
                yield RecordError('record needs a non-empty string "text"', source=str(path), line=lineno,
                                  record_id=rid)
                continue
            image = data.get("image")
            yield {"id": rid, "text": data["text"], "image": image if isinstance(image, str) else None,
                   "line": lineno, "source": str(path)}


def detected_mentions(records: Iterable[dict | RecordError], kb: KnowledgeBase,
                      case: str = "smart") -> Iterator[Mention | RecordError]:
    """The mentions found in each raw text record, with ids `"<record id>:<n>"` (n from 1);
    a record with none gives a RecordError naming it (so no input line vanishes unseen);
    unreadable records pass through as they are."""
    gaz = gazetteer_for(kb)
    for rec in records:
        if isinstance(rec, RecordError):
            yield rec
            continue
        spans = gaz.find(rec["text"], case)
        if not spans:
            yield RecordError("no name or alias of the KB found in the text (nothing to link)",
                              source=rec.get("source"), line=rec.get("line"), record_id=rec["id"])
            continue
        for n, (start, end, surface) in enumerate(spans, 1):
            yield Mention(id=f"{rec['id']}:{n}", text=rec["text"], mention=surface, start=start, end=end,
                          image=rec.get("image"))
