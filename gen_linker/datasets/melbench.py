"""WikiMEL and RichpediaMEL as MELBench distributes them, with GHMFC-style side files.

Samples: one JSON object keyed by sample id, each `{"sentence", "mentions", "entities",
"answer", ...}` with parallel lists (some RichpediaMEL releases give single strings).
Splits: `splits.json` (`{"train": [ids], "dev": [...], "test": [...]}`) or separate
`train.json` / `dev.json` / `test.json` holding the samples themselves.
KB: `qid2ne.json` (QID -> name) and optional `qid2abs.json` (QID -> description).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataFormatError, RecordError
from ..kb import KnowledgeBase
from ..schema import Entity, Mention
from .spans import locate

SAMPLE_FILES = ("Wikidata-MEL.json", "Richpedia-MEL.json", "WikiMEL.json", "RichpediaMEL.json")
SPLITS = ("train", "dev", "test")


def looks_like(path: Path) -> bool:
    """A folder with a MELBench samples file, or a JSON object of samples."""
    if path.is_dir():
        return _samples_file(path) is not None or any((path / f"{s}.json").exists() for s in SPLITS)
    if path.suffix == ".json":
        try:
            data = _load_json(path)
        except DataFormatError:
            return False
        return isinstance(data, dict) and _is_sample(next(iter(data.values()), None))
    return False


def load(path: str | Path, split: str | None = None) -> tuple[list[Mention | RecordError], KnowledgeBase | None]:
    """Mentions (in sample order) of `split` (None: all samples) and the KB of the folder."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    samples = _samples(path, folder, split)
    mentions: list[Mention | RecordError] = []
    for n, (sid, sample) in enumerate(samples.items(), 1):
        mentions.extend(_sample_mentions(str(sid), sample, source=f"{path}[{sid}]", line=n))
    return mentions, load_kb(folder, samples)


def _samples(path: Path, folder: Path, split: str | None) -> dict[str, Any]:
    if split is not None and split not in SPLITS:
        raise DataFormatError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if path.is_dir() and split and (folder / f"{split}.json").exists():
        return _load_json(folder / f"{split}.json")
    sample_file = path if path.is_file() else _samples_file(folder)
    if sample_file is None:
        raise DataFormatError(f"{path}: no MELBench samples file ({', '.join(SAMPLE_FILES)}) "
                              f"or {split or 'train'}.json found")
    samples = _load_json(sample_file)
    if not isinstance(samples, dict):
        raise DataFormatError(f"{sample_file} is not a JSON object keyed by sample id")
    if split is None:
        return samples
    splits_file = folder / "splits.json"
    if not splits_file.exists():
        raise DataFormatError(f"split {split!r} asked for, but {folder} has neither splits.json "
                              f"nor {split}.json")
    ids = _load_json(splits_file).get(split)
    if ids is None:
        raise DataFormatError(f"{splits_file} has no {split!r} list")
    return {str(i): samples[str(i)] for i in ids if str(i) in samples}


def _sample_mentions(sid: str, sample: Any, *, source: str, line: int) -> list[Mention | RecordError]:
    if not _is_sample(sample):
        return [RecordError('sample is not an object with "sentence", "mentions" and "answer"',
                            source=source, line=line, record_id=sid)]
    text = sample["sentence"]
    mentions, answers = _as_list(sample["mentions"]), _as_list(sample.get("answer"))
    out: list[Mention | RecordError] = []
    cursor = 0
    for k, surface in enumerate(mentions):
        mid = f"{sid}-{k}"
        gold = answers[k] if k < len(answers) else None
        span = locate(text, surface, cursor)
        if span is None:
            out.append(RecordError(f"mention {surface!r} is not found in {text!r}",
                                   source=source, line=line, record_id=mid))
            continue
        cursor = span[1]
        out.append(Mention(id=mid, text=text, mention=surface, start=span[0], end=span[1],
                           image=sample.get("imgPath") or None, gold=str(gold) if gold else None))
    return out


def load_kb(folder: Path, samples: dict[str, Any] | None = None) -> KnowledgeBase | None:
    """Entities of `qid2ne.json` (+ `qid2abs.json`); gold answers missing from it are added
    with the sample's entity name, so every gold id is in the KB."""
    names_file = folder / "qid2ne.json"
    names: dict[str, str] = _load_json(names_file) if names_file.exists() else {}
    abs_file = folder / "qid2abs.json"
    descriptions: dict[str, str] = _load_json(abs_file) if abs_file.exists() else {}
    for sample in (samples or {}).values():
        if _is_sample(sample):
            for qid, name in zip(_as_list(sample.get("answer")), _as_list(sample.get("entities"))):
                if qid and name and str(qid) not in names:
                    names[str(qid)] = name
    if not names:
        return None
    return KnowledgeBase.from_entities(
        (Entity(id=str(q), name=n, description=descriptions.get(q)) for q, n in names.items()),
        source=str(names_file))


def _samples_file(folder: Path) -> Path | None:
    return next((folder / f for f in SAMPLE_FILES if (folder / f).exists()), None)


def _is_sample(sample: Any) -> bool:
    return isinstance(sample, dict) and isinstance(sample.get("sentence"), str) and "mentions" in sample


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read {path} as JSON: {exc}") from None
