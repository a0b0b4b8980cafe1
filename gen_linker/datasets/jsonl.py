"""gen-linker's own JSONL: one mention per line, `{"id", "text", "mention", "start"?, "end"?,
"image"?, "gold"?}`. Reading never stops at a bad line: it yields an error for it instead."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import RecordError
from ..schema import Mention
from .spans import locate


def parse_mention(data: object, *, source: str, line: int) -> Mention:
    """One record to a `Mention`, checking fields and offsets; raises RecordError."""
    def fail(reason: str) -> RecordError:
        rid = str(data.get("id")) if isinstance(data, dict) and data.get("id") is not None else None
        return RecordError(reason, source=source, line=line, record_id=rid)

    if not isinstance(data, dict):
        raise fail("record is not a JSON object")
    for key in ("text", "mention"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise fail(f'record needs a non-empty string "{key}"')
    rid = data.get("id")
    rid = str(rid) if rid is not None else str(line)
    text, mention = data["text"], data["mention"]
    start, end = data.get("start"), data.get("end")
    if start is not None or end is not None:
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise fail(f"offsets start={start!r} end={end!r} do not fit a text of {len(text)} characters")
    else:
        span = locate(text, mention)
        if span is None:
            raise fail(f"mention {mention!r} is not found in the text {text[:80]!r}; "
                       'give "start" and "end" offsets or fix the mention')
        start, end = span
    gold = data.get("gold")
    return Mention(id=rid, text=text, mention=mention, start=start, end=end,
                   image=data.get("image"), gold=str(gold) if gold is not None else None)


def read_mentions(path: str | Path) -> Iterator[Mention | RecordError]:
    """Every line of a mentions JSONL file, as a Mention or the RecordError saying why not.

    Blank lines are errors too (not skipped), so output line N always answers input line N.
    """
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    raise RecordError(f"malformed JSON ({exc.args[0] if exc.args else exc})",
                                      source=str(path), line=lineno) from None
                yield parse_mention(data, source=str(path), line=lineno)
            except RecordError as err:
                yield err


def mentions_text(mentions: Iterable[Mention]) -> str:
    """Mentions as gen-linker JSONL text, one object per line."""
    return "".join(json.dumps(m.to_dict(), ensure_ascii=False) + "\n" for m in mentions)


def write_mentions(mentions: Iterable[Mention], path: str | Path) -> Path:
    """Write mentions as JSONL through a temporary file moved into place (never half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(mentions_text(mentions), encoding="utf-8")
    os.replace(tmp, path)
    return path
