"""REL's HTTP format (Radboud Entity Linker, `POST /` of its server), so REL clients work
against gen-linker unchanged.

Request: `{"text", "spans": [[start, length], ...], "tagger"?}`; spans given means
disambiguation of exactly those spans (ED), none or `[]` means entity linking: REL runs its
own mention detection, gen-linker its gazetteer over the KB's names and aliases.

Answer: a JSON list with one 7-element list per linked mention, in text order,
`[start, length, mention, entity, ed_confidence, md_confidence, tag]` (REL's
`utils.process_results`; the second value is a length, whatever REL's docstring says).
As in REL, NIL answers are left out. `entity` is the KB id, or with `--rel-entity name` the
entity's name written as a Wikipedia title (spaces as underscores), which is what REL returns.
`ed_confidence` is the linker's confidence in [0, 1] (`LinkResult.confidence`: calibrated by
the fused linker, a softmax share of the candidates' scores elsewhere; 0.0 when a linker gives
none). There is no NER model here, so `md_confidence` is 0.0 and `tag` is "NULL", REL's values
for given spans.
"""
from __future__ import annotations

from typing import Literal, Sequence

from ..schema import LinkResult, Mention

REL_ENTITY = ("id", "name")
RelAnnotation = list  # [int, int, str, str, float, float, str]


def rel_mentions(text: str, spans: Sequence[tuple[int, int]], prefix: str = "rel") -> list[Mention]:
    """The mentions of REL `[start, length]` spans (already checked to lie inside `text`)."""
    return [Mention(id=f"{prefix}-{i}", text=text, mention=text[s:s + n], start=s, end=s + n)
            for i, (s, n) in enumerate(spans)]


def rel_annotations(mentions: Sequence[Mention], results: Sequence[LinkResult | dict],
                    entity: Literal["id", "name"] = "id") -> list[RelAnnotation]:
    """REL's answer for linked `mentions`; NIL answers and error records are left out."""
    out: list[RelAnnotation] = []
    for m, r in zip(mentions, results):
        if not isinstance(r, LinkResult) or r.entity_id is None:
            continue
        value = r.entity_id if entity == "id" else (r.name or r.entity_id).replace(" ", "_")
        confidence = float(r.confidence) if r.confidence is not None else 0.0
        out.append([m.start, m.end - m.start, m.mention, value, confidence, 0.0, "NULL"])
    return out
