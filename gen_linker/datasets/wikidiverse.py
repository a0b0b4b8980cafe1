"""WikiDiverse: a JSON list of `{"sentence", "mention", "mention_type", "mention_image",
"entity"}`, where `entity` is a Wikipedia title or URL (it becomes both id and name)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import DataFormatError, RecordError
from ..kb import KnowledgeBase
from ..schema import Entity, Mention
from .spans import locate

KEYS = ("sentence", "mention", "entity")


def looks_like(path: Path) -> bool:
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and all(k in data[0] for k in KEYS)


def entity_title(entity: str) -> str:
    """`https://en.wikipedia.org/wiki/Donald_Trump` or `Donald_Trump` -> `Donald Trump`."""
    title = entity.rsplit("/wiki/", 1)[-1] if "/wiki/" in entity else entity
    return unquote(title).replace("_", " ").strip()


def load(path: str | Path, split: str | None = None) -> tuple[list[Mention | RecordError], KnowledgeBase | None]:
    """Mentions in file order; the KB holds every entity named by the file (id = title)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path} is not a JSON list of WikiDiverse records")
    mentions: list[Mention | RecordError] = []
    entities: dict[str, Entity] = {}
    for n, rec in enumerate(data, 1):
        mentions.append(_mention(rec, n, str(path)))
        if isinstance(rec, dict) and isinstance(rec.get("entity"), str) and rec["entity"].strip():
            title = entity_title(rec["entity"])
            entities.setdefault(title, Entity(id=title, name=title))
    kb = KnowledgeBase.from_entities(entities.values(), source=str(path)) if entities else None
    return mentions, kb


def _mention(rec: Any, n: int, source: str) -> Mention | RecordError:
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in KEYS):
        return RecordError(f"record needs string fields {', '.join(KEYS)}", source=source, line=n)
    span = locate(rec["sentence"], rec["mention"])
    if span is None:
        return RecordError(f"mention {rec['mention']!r} is not found in {rec['sentence']!r}",
                           source=source, line=n, record_id=str(n))
    gold = entity_title(rec["entity"]) if rec["entity"].strip() else None
    return Mention(id=str(n), text=rec["sentence"], mention=rec["mention"], start=span[0], end=span[1],
                   image=rec.get("mention_image") or None, gold=gold)
