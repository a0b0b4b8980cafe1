"""Arrays on disk that processes map instead of copying: a plain, uncompressed `.npz`.

A KB folder's arrays (the name trie, the BM25 matrix) are read by every linker process of a
machine (Ray actors, server workers). Memory-mapped, they live once in the page cache and each
process maps the same pages: N workers cost one copy, not N. `np.load` ignores `mmap_mode` for
`.npz` archives, but `np.savez` stores members uncompressed, so each member's data is a
contiguous byte range of the file: `load_arrays` finds it (zip local header, then the `.npy`
header) and maps it read-only. No pickle anywhere; a compressed archive is read normally.
"""
from __future__ import annotations

import mmap
import os
import struct
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

# Members smaller than this are read into memory: mapping them saves nothing.
MAP_FROM_BYTES = 1 << 16
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")   # zip local file header, 30 bytes
_LOCAL_MAGIC = 0x04034B50


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an uncompressed `.npz`, atomically (a killed write leaves no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_arrays(path: str | Path, mmap_mode: bool = True) -> dict[str, np.ndarray]:
    """The arrays of an `.npz`; with `mmap_mode`, large members are read-only views of a
    shared memory map of the file (plain ndarrays, so indexing costs what it always does)."""
    path = Path(path)
    if not mmap_mode:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out: dict[str, np.ndarray] = {}
    with path.open("rb") as f, zipfile.ZipFile(f) as zf:
        mapped = None
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size < max(MAP_FROM_BYTES, 1024):
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_MAGIC:
                raise ValueError(f"{path}: member {info.filename} has no zip local header")
            f.seek(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError(f"{path}: member {info.filename} holds Python objects; refusing to load it")
            if mapped is None:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            count = int(np.prod(shape, dtype=np.int64))
            flat = np.frombuffer(mapped, dtype=dtype, count=count, offset=f.tell())
            out[name] = flat.reshape(shape, order="F" if fortran else "C")
    return out
