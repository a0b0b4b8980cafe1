"""Dataset loaders, one module per public format, behind one `load` call.

Every loader returns the mentions in source order, each a `Mention` or the `RecordError`
that says why that record is unusable, and the knowledge base the source carries (or None).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFormatError, RecordError
from ..kb import KnowledgeBase
from ..schema import Mention
from . import jsonl, melbench, wikidiverse

FORMATS = ("melbench", "wikidiverse", "jsonl")


@dataclass
class Dataset:
    mentions: list[Mention | RecordError]
    kb: KnowledgeBase | None
    format: str

    @property
    def valid(self) -> list[Mention]:
        return [m for m in self.mentions if isinstance(m, Mention)]

    @property
    def errors(self) -> list[RecordError]:
        return [m for m in self.mentions if isinstance(m, RecordError)]


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"dataset {path} does not exist")
    if path.suffix == ".jsonl":
        return "jsonl"
    if melbench.looks_like(path):
        return "melbench"
    if wikidiverse.looks_like(path):
        return "wikidiverse"
    raise DataFormatError(
        f"cannot tell the format of {path}: expected a MELBench folder or samples JSON "
        "(WikiMEL, RichpediaMEL), a WikiDiverse JSON list, or gen-linker JSONL (.jsonl); "
        f"pass --format {'|'.join(FORMATS)}")


def load(path: str | Path, format: str = "auto", split: str | None = None) -> Dataset:
    """Load any supported dataset; `split` selects train/dev/test where the format has splits."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "melbench":
        mentions, kb = melbench.load(path, split)
    elif fmt == "wikidiverse":
        mentions, kb = wikidiverse.load(path, split)
    elif fmt == "jsonl":
        mentions, kb = list(jsonl.read_mentions(path)), None
    else:
        raise DataFormatError(f"unknown dataset format {fmt!r}: use one of auto, {', '.join(FORMATS)}")
    return Dataset(mentions, kb, fmt)
