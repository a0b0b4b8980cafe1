"""Side files keyed by id: entity descriptions (`{"id", "description"}`, what `gen-linker
describe` writes) and image captions for DIM's expert features (`{"id"|"image", "caption",
"answer"?}`, keyed by mention id or image reference). Bad lines are reported, not fatal."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import GenLinkerError, RecordError


def read_keyed_jsonl(path: str | Path, keys: tuple[str, ...], value: str) -> tuple[dict[str, dict], list[RecordError]]:
    """Records by the first of `keys` they carry; each must have a non-empty string `value`."""
    path = Path(path)
    if not path.exists():
        raise GenLinkerError(f"{path} does not exist")
    out: dict[str, dict] = {}
    errors: list[RecordError] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                errors.append(RecordError(f"malformed JSON ({exc})", source=str(path), line=lineno))
                continue
            key = next((data.get(k) for k in keys if isinstance(data, dict) and data.get(k)), None)
            if key is None or not isinstance(data.get(value), str) or not data[value].strip():
                errors.append(RecordError(f"needs one of {'/'.join(keys)} and a non-empty string {value!r}",
                                          source=str(path), line=lineno))
                continue
            out[str(key)] = data
    return out, errors


def read_descriptions(path: str | Path) -> dict[str, str]:
    """Entity id -> description."""
    records, errors = read_keyed_jsonl(path, ("id",), "description")
    _warn(path, errors)
    return {k: r["description"] for k, r in records.items()}


NAMES_ONLY = "none"   # as a descriptions "path": ignore every description, link by names alone


def descriptions_for(path: str | Path | None, kb) -> dict[str, str] | None:
    """The descriptions a setting asks for: None (the KB's own), `none` (names only: every
    description blanked), or a descriptions JSONL file."""
    if path is None:
        return None
    if str(path) == NAMES_ONLY:
        return {e.id: "" for e in kb}
    return read_descriptions(path)


def read_captions(path: str | Path) -> dict[str, dict]:
    """Mention id or image reference -> captions record."""
    records, errors = read_keyed_jsonl(path, ("id", "image"), "caption")
    _warn(path, errors)
    return records


def _warn(path, errors: list[RecordError]) -> None:
    if errors:
        print(f"warning: {len(errors)} unusable line(s) in {path}, first: {errors[0]}", file=sys.stderr)
