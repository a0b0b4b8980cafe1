"""Finding a mention's character span in its sentence when a source gives only the string."""
from __future__ import annotations

import re

# Words a dataset may have dropped from a mention (WikiMEL writes "Alexis Tocqueville" for
# "Alexis de Tocqueville"): at most this many may sit between two of the mention's words.
_MAX_GAP_WORDS = 2


def locate(text: str, mention: str, start: int | None = None) -> tuple[int, int] | None:
    """(start, end) of `mention` in `text`, or None when it is not there.

    Tries, in order: the exact string (from `start` on when given), the string ignoring case,
    then the mention's words in order with up to two dropped words or punctuation between them.
    """
    if not mention:
        return None
    i = text.find(mention, start or 0)
    if i < 0 and start:
        i = text.find(mention)
    if i >= 0:
        return i, i + len(mention)
    i = text.lower().find(mention.lower())
    if i >= 0:
        return i, i + len(mention)
    words = re.findall(r"\w+", mention)
    if not words:
        return None
    gap = rf"\W+(?:\w+\W+){{0,{_MAX_GAP_WORDS}}}?"
    pattern = r"(?<!\w)" + gap.join(re.escape(w) for w in words) + r"(?!\w)"
    m = re.search(pattern, text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None
