"""The `Linker` protocol: what every linker offers, whatever it is made of.

A linker answers a batch of mentions in order (`link`), one `LinkResult` per mention, and one
mention given as text (`process_text`). Batching is the caller's choice: `link` takes as many
mentions as it is given and groups them as its backend likes (the batch CLI hands over chunks
of a few backend batches). Bad input for one mention is a `RecordError`; anything else a
linker raises stops the caller.

`LinkerBase` supplies `process_text` from `link`, so a new linker only writes `link` and a
`from_spec(spec, parts)` classmethod (see `gen_linker.linkers.LINKERS`).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from ..datasets.spans import locate
from ..errors import RecordError
from ..schema import LinkResult, Mention


@runtime_checkable
class Linker(Protocol):
    name: str

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        """One result per mention, in order; `entity_id=None` is NIL."""

    def process_text(self, text: str, mention: str, start: int | None = None, end: int | None = None,
                     mention_id: str = "0") -> LinkResult:
        """Link one mention of `text`; its offsets are found when not given."""


class LinkerBase:
    """Shared behaviour: `process_text` through `link`."""

    name = "linker"

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:  # pragma: no cover - abstract
        raise NotImplementedError

    def process_text(self, text: str, mention: str, start: int | None = None, end: int | None = None,
                     mention_id: str = "0") -> LinkResult:
        """Link one mention of `text` (its offsets are found when not given)."""
        if start is None or end is None:
            span = locate(text, mention)
            if span is None:
                raise RecordError(f"mention {mention!r} is not found in the text {text[:80]!r}")
            start, end = span
        return self.link([Mention(mention_id, text, mention, start, end)])[0]
