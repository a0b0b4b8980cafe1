"""Batch linking of a record stream into a JSONL file: order kept, errors recorded, resumable.

Output line i answers input record i, always: a link result, or `{"id", "error", "line"}` for
a record that could not be used. The file is flushed after every chunk, so a killed run leaves
complete lines plus at most one partial line; `resume=True` drops that partial line, checks
that the lines written so far answer the first records of the input, and goes on from there:
no duplicates, no gaps.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from .errors import GenLinkerError, RecordError, ResumeError
from .schema import LinkResult, Mention


class Linker(Protocol):
    name: str

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]: ...


@dataclass
class BatchSummary:
    linked: int = 0
    nil: int = 0
    errors: int = 0
    resumed: int = 0
    image_errors: int = 0   # mentions linked without their image (missing / unreadable / corrupt)
    error_messages: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.linked} linked, {self.nil} NIL, {self.errors} error(s)"
        if self.image_errors:
            text += f", {self.image_errors} linked without their image (bad image)"
        return text + (f", {self.resumed} already done (resumed)" if self.resumed else "")


def error_id(err: RecordError, index: int | str) -> str:
    """The id an error record is written under: the record's own, else its line, else its index."""
    return err.record_id or (str(err.line) if err.line is not None else str(index))


def error_record(err: RecordError, fallback_id: str) -> dict:
    rec = {"id": error_id(err, fallback_id), "error": err.reason}
    if err.line is not None:
        rec["line"] = err.line
    return rec


def link_to_file(linker: Linker, records: Iterable[Mention | RecordError], output: str | Path, *,
                 chunk_size: int = 64, resume: bool = False, overwrite: bool = False,
                 total: int | None = None, progress: bool = True) -> BatchSummary:
    """Link every record into `output` (JSONL), `chunk_size` mentions per call to the linker."""
    output = Path(output)
    summary = BatchSummary()
    done_ids: list[str] = []
    if output.exists() and output.stat().st_size > 0:
        if resume:
            done_ids = completed_ids(output)
        elif not overwrite:
            raise GenLinkerError(f"output {output} already exists: pass --resume to continue it "
                                 "or --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    bar = _progress(total, progress, initial=len(done_ids), desc=f"linking ({linker.name})")
    with output.open("a" if done_ids else "w", encoding="utf-8") as out:
        for n, chunk in enumerate(_chunks(records, chunk_size, skip=done_ids, summary=summary)):
            lines = _link_chunk(linker, chunk, summary)
            out.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in lines))
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
    bar.close()
    return summary


def _link_chunk(linker: Linker, chunk: list[tuple[int, Mention | RecordError]], summary: BatchSummary) -> list[dict]:
    mentions = [r for _, r in chunk if isinstance(r, Mention)]
    try:
        results = {r.mention_id: r for r in linker.link(mentions)}
    except (GenLinkerError, ValueError, RuntimeError):
        results = {}
        for m in mentions:  # one bad mention must not cost the chunk: retry one by one
            try:
                results[m.id] = linker.link([m])[0]
            except (GenLinkerError, ValueError, RuntimeError) as exc:
                results[m.id] = RecordError(f"linking failed: {exc}", record_id=m.id)
    lines = []
    for index, rec in chunk:
        res = results.get(rec.id) if isinstance(rec, Mention) else rec
        if isinstance(res, RecordError):
            summary.errors += 1
            summary.error_messages.append(str(res))
            lines.append(error_record(res, str(index)))
        else:
            summary.linked += res.entity_id is not None
            summary.nil += res.entity_id is None
            if res.image_error:
                summary.image_errors += 1
                summary.error_messages.append(f"{res.mention_id}: linked without image: {res.image_error}")
            lines.append(res.to_dict())
    return lines


def _chunks(records: Iterable[Mention | RecordError], size: int, skip: list[str],
            summary: BatchSummary) -> Iterator[list[tuple[int, Mention | RecordError]]]:
    chunk: list[tuple[int, Mention | RecordError]] = []
    n_mentions = 0
    for index, rec in enumerate(records, 1):
        if index <= len(skip):
            rid = rec.id if isinstance(rec, Mention) else error_id(rec, index)
            if rid != skip[index - 1]:
                raise ResumeError(f"cannot resume: output line {index} answers record {skip[index - 1]!r} "
                                  f"but input record {index} is {rid!r}; is it the same input?")
            summary.resumed += 1
            continue
        chunk.append((index, rec))
        n_mentions += isinstance(rec, Mention)
        if n_mentions >= size:
            yield chunk
            chunk, n_mentions = [], 0
    if chunk:
        yield chunk


def completed_ids(output: Path) -> list[str]:
    """Ids of the complete lines of `output`; a trailing partial line is cut off the file."""
    ids: list[str] = []
    good_bytes = 0
    with output.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                ids.append(str(json.loads(raw)["id"]))
            except (ValueError, KeyError, TypeError):
                break
            good_bytes += len(raw)
    if good_bytes < output.stat().st_size:
        with output.open("r+b") as f:
            f.truncate(good_bytes)
    return ids


def _progress(total: int | None, enabled: bool, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="mention", disable=not enabled,
                dynamic_ncols=True, mininterval=1.0)
