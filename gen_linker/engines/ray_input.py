"""The input side of the Ray engine: JSONL files read as a Ray Data datasource, one row per
chunk of the local batch.

`MentionChunks` has one read task per input file (a file, or a folder's `.jsonl` shards in
name order, records numbered across them), run on the driver's node (`supports_distributed_reads`
False: the input need only be there). A task parses its file with the local batch's own reader
(`datasets.jsonl.read_mentions`, so bad lines become the same error records), skips what a
resumed run has done, and cuts the rest into the local batch's chunks: `chunk_size` mentions,
error records riding along. A row is `{first, count, records}`: the index of its first record,
how many, and the records as JSON.
"""
from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from ..errors import GenLinkerError, RecordError
from ..schema import Mention
from ..spec import LinkerSpec

try:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata
except ImportError:  # the [ray] extra is not installed (ray_engine says how to get it)
    Datasource = object


def input_files(path: Path) -> list[Path]:
    """The JSONL files of an input: the file itself, or a folder's `*.jsonl` shards sorted by
    name (their records are numbered across the shards in that order)."""
    path = Path(path)
    if path.is_dir():
        files = [p.resolve() for p in sorted(path.iterdir(), key=lambda p: p.name)
                 if p.is_file() and p.name.endswith(".jsonl")]
        if not files:
            raise GenLinkerError(f"input folder {path} holds no .jsonl shard: --engine ray reads JSONL mentions "
                                 "(convert other formats with gen-linker convert)")
        return files
    if not path.exists():
        raise GenLinkerError(f"input {path} does not exist")
    if not path.name.endswith(".jsonl"):
        raise GenLinkerError(f"input {path} is not a .jsonl file: --engine ray reads JSONL mentions, a file or a "
                             "folder of .jsonl shards (convert other formats with gen-linker convert)")
    return [path.resolve()]   # read tasks do not run in this directory


def count_records(path: Path) -> int:
    """Records of a JSONL file as `read_mentions` counts them: every line, blank ones too."""
    with path.open(encoding="utf-8", errors="replace") as f:
        return sum(1 for _ in f)


def chunk_size_for(spec: LinkerSpec) -> int:
    """The local batch's chunk (`cli._chunk_size`: two backend batches, at least 64), from the
    spec, so that a chunk holds the same mentions here as there: batched generation pads a
    chunk's prompts together, and float32 outputs are then equal bit for bit."""
    uses_llm = spec.linker in ("generative", "pipeline") or (spec.linker == "fused" and spec.rerank.llm)
    if not uses_llm:
        return 64
    batch = spec.generative.batch_size or (64 if spec.backend.name == "vllm" else 8)
    return max(64, 2 * batch)


def encode_record(rec: Mention | RecordError) -> dict:
    """A record as a chunk row carries it (a mention, or the error that replaced it)."""
    if isinstance(rec, Mention):
        return {"m": rec.to_dict()}
    return {"e": rec.reason, "source": rec.source, "line": rec.line, "id": rec.record_id}


def decode_record(data: dict) -> Mention | RecordError:
    if "m" in data:
        return Mention.from_dict(data["m"])
    return RecordError(data["e"], source=data["source"], line=data["line"], record_id=data["id"])


def read_chunks(path: str, first_index: int, skip_lines: int, chunk_size: int) -> Iterator[Any]:
    """The chunks of one input file as one-row Arrow tables `{first, count, records}`: records
    numbered from `first_index`, the first `skip_lines` left out (resumed), a chunk closed at
    `chunk_size` mentions like the local batch's."""
    import pyarrow as pa

    from ..datasets.jsonl import read_mentions

    def row(first: int, records: list[dict]):
        return pa.table({"first": pa.array([first], pa.int64()), "count": pa.array([len(records)], pa.int64()),
                         "records": pa.array([json.dumps(records, ensure_ascii=False)], pa.large_string())})

    chunk: list[dict] = []
    first, n_mentions = first_index + skip_lines, 0
    for offset, rec in enumerate(islice(read_mentions(path), skip_lines, None)):
        if not chunk:
            first = first_index + skip_lines + offset
        chunk.append(encode_record(rec))
        n_mentions += isinstance(rec, Mention)
        if n_mentions >= chunk_size:
            yield row(first, chunk)
            chunk, n_mentions = [], 0
    if chunk:
        yield row(first, chunk)


class MentionChunks(Datasource):
    """A Ray Data datasource: one read task per input file (not yet done), run on the driver's
    node, yielding one row per chunk of the local batch."""

    def __init__(self, files: list[tuple[str, int, int]], done: int, chunk_size: int) -> None:
        """`files`: (path, records, index of its first record); `done`: records to skip."""
        super().__init__()
        self.files, self.done, self.chunk_size = files, done, chunk_size

    @property
    def supports_distributed_reads(self) -> bool:
        return False   # the input need only be on the driver's machine

    def get_name(self) -> str:
        return "MentionChunks"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(os.path.getsize(p) for p, _, _ in self.files)

    def get_read_tasks(self, parallelism: int, *args, **kwargs) -> list:
        tasks = []
        for path, records, first in self.files:
            skip = min(records, max(0, self.done - (first - 1)))
            if skip >= records:
                continue
            meta = BlockMetadata(num_rows=None, size_bytes=os.path.getsize(path), exec_stats=None, input_files=(path,))
            tasks.append(ReadTask(_ReadFile(path, first, skip, self.chunk_size), meta))
        return tasks


class _ReadFile:
    """A read task's function (a class, so that it pickles by reference to this module)."""

    def __init__(self, path: str, first: int, skip: int, chunk_size: int) -> None:
        self.args = (path, first, skip, chunk_size)

    def __call__(self):
        return read_chunks(*self.args)
