"""A frozen CLIP-style vision encoder: images -> one feature vector each, batched, cached.

Images are referenced from mention records as a path (relative to an image root) or inline as
base64 (optionally a `data:image/...;base64,` URL). Features are cached on disk by the image's
content hash and the encoder's fingerprint, so a second run encodes nothing. A missing,
unreadable or corrupt image raises `ImageError` naming the reference; `encode_refs` collects
those per image so a batch goes on and links such mentions without an image.

No real CLIP ships on the package registries: `VisionEncoder(folder_or_id)` loads the user's,
and `VisionEncoder.from_config(config)` builds a randomly initialised frozen one (tests, and the
synthetic benchmark: frozen random features still carry an image's content). Preprocessing is
transformers' PIL + numpy CLIP processor: no torchvision, which has no CPU build there.

Image crops (DWE's visual enhancer attends over regions of the image): `encode_crops` gives
each image's crop features, the boxes from a regions side file (`read_regions`: JSONL
`{"image": ref, "boxes": [[x0, y0, x1, y1], ...]}` in pixels, from any detector the user
runs) where the image has an entry, else a `grid` x `grid` grid of equal cells (no detector
ships on the package registries). Crop features are cached like whole-image features, by the
image's content hash and the boxes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import sys
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import GenLinkerError, ImageError, RecordError

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
Box = tuple[float, float, float, float]     # x0, y0, x1, y1 in pixels
MAX_CROPS = 9     # crops per image the encoder sees: a 3 x 3 grid (DWE's person crops have no cap; memory does)


def image_bytes(ref: str, root: str | Path | None = None) -> bytes:
    """The raw bytes of an image reference: a path (relative to `root`) or base64 data."""
    if not isinstance(ref, str) or not ref:
        raise ImageError(f"image reference {ref!r} is empty or not a string")
    path = Path(ref) if root is None or Path(ref).is_absolute() else Path(root) / ref
    inline = _DATA_URL.match(ref) or (len(ref) >= 32 and _BASE64.match(ref))
    if inline and not _is_file(path):   # a file of that name wins
        try:
            return base64.b64decode("".join(_DATA_URL.sub("", ref).split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"image {ref[:40]!r}... is not valid base64: {e}") from e
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"image {ref!r} cannot be read ({path}): {e.strerror or e}") from e


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:   # e.g. a name too long to be a path: it is inline data
        return False


def decode_image(data: bytes, ref: str = "image"):
    """A PIL RGB image from bytes; ImageError if the bytes are not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"image {ref[:80]!r} is corrupt or not an image: {e}") from e


class VisionEncoder:
    """Frozen vision tower; `encode(images)` gives `[n, feature_dim]` float32 features
    (the projected image embedding when the model has a projection, else the pooled output)."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 32,
                 _model=None, _processor=None) -> None:
        from transformers import AutoConfig, CLIPImageProcessorPil, CLIPVisionModelWithProjection

        if _model is None:
            if model is None:
                raise ImageError("no vision encoder given: pass a CLIP model folder (or hub id); none "
                                 "ships on the package registries")
            config = AutoConfig.from_pretrained(model)
            vision = getattr(config, "vision_config", config)
            _model = CLIPVisionModelWithProjection.from_pretrained(model, config=vision)
            try:
                _processor = CLIPImageProcessorPil.from_pretrained(model)
            except OSError:
                _processor = _processor_for(vision.image_size)
        self.model = _model.to(device).eval().requires_grad_(False)
        self.processor = _processor
        self.device, self.batch_size = torch.device(device), batch_size
        self.name = model or "random"
        self.n_encoded = 0   # images that really went through the model (the cache skips the rest)

    @classmethod
    def from_config(cls, config=None, seed: int = 0, **kwargs) -> "VisionEncoder":
        """A randomly initialised, frozen encoder from a `CLIPVisionConfig` (default: a small one)."""
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        config = config or CLIPVisionConfig(image_size=64, patch_size=16, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=2, projection_dim=64)
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
        enc = cls(None, _model=model, _processor=_processor_for(config.image_size), **kwargs)
        enc.name = f"random-clip-seed{seed}"
        return enc

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @cached_property
    def fingerprint(self) -> str:
        """Changes when the weights do: names the feature cache (computed once: frozen weights)."""
        h = hashlib.sha256(self.name.encode())
        for p in list(self.model.parameters())[:4] + list(self.model.parameters())[-2:]:
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, images: Sequence) -> np.ndarray:
        """PIL images -> `[n, feature_dim]` float32, in batches of `batch_size`."""
        out = [np.zeros((0, self.feature_dim), dtype=np.float32)]
        for i in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")
            emb = self.model(pixel_values=pixels["pixel_values"].to(self.device)).image_embeds
            out.append(emb.float().cpu().numpy())
            self.n_encoded += len(images[i : i + self.batch_size])
        return np.concatenate(out)

    def encode_refs(self, refs: Sequence[str], root: str | Path | None = None,
                    cache_dir: str | Path | None = None) -> tuple[list[np.ndarray | None], list[ImageError | None]]:
        """Features of image references, from the cache where possible. A bad image gives None
        and its ImageError at its index; the others are encoded in batches."""
        feats: list[np.ndarray | None] = [None] * len(refs)
        errors: list[ImageError | None] = [None] * len(refs)
        cache = Path(cache_dir) / f"image-features-{self.fingerprint}" if cache_dir else None
        todo: dict[str, tuple[object, list[int]]] = {}
        for i, ref in enumerate(refs):
            try:
                data = image_bytes(ref, root)
                key = hashlib.sha256(data).hexdigest()[:32]
                if cache is not None and (cache / f"{key}.npy").exists():
                    feats[i] = np.load(cache / f"{key}.npy")
                elif key in todo:
                    todo[key][1].append(i)
                else:
                    todo[key] = (decode_image(data, ref), [i])
            except ImageError as e:
                errors[i] = e
        if todo:
            keys = list(todo)
            encoded = self.encode([todo[k][0] for k in keys])
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
            for key, vec in zip(keys, encoded):
                for i in todo[key][1]:
                    feats[i] = vec
                if cache is not None:   # written whole or not at all: a killed run leaves no half file
                    tmp = cache / f"{key}.tmp{os.getpid()}.npy"
                    np.save(tmp, vec)
                    os.replace(tmp, cache / f"{key}.npy")
        return feats, errors


    def encode_crops(self, refs: Sequence[str], root: str | Path | None = None, cache_dir: str | Path | None = None,
                     regions: Mapping[str, Sequence[Box]] | None = None, grid: int = 2,
                     max_crops: int = MAX_CROPS) -> tuple[list[np.ndarray | None], list[ImageError | None]]:
        """`[k, feature_dim]` features of each image's crops: its boxes in `regions` (keyed by
        the reference as the mentions give it), else a `grid` x `grid` grid; at most `max_crops`
        per image (the first ones). `k` is 0 for an image whose regions entry has no box (or
        `grid` 0 without one). A bad image gives None and its ImageError, as in `encode_refs`."""
        regions = regions or {}
        feats: list[np.ndarray | None] = [None] * len(refs)
        errors: list[ImageError | None] = [None] * len(refs)
        cache = Path(cache_dir) / f"image-crops-{self.fingerprint}" if cache_dir else None
        todo: dict[str, tuple[list, list[int]]] = {}
        for i, ref in enumerate(refs):
            try:
                data = image_bytes(ref, root)
                boxes = regions.get(ref)
                setting = json.dumps([list(b) for b in boxes] if boxes is not None else f"grid{grid}")
                key = hashlib.sha256(data + setting.encode() + str(max_crops).encode()).hexdigest()[:32]
                if cache is not None and (cache / f"{key}.npy").exists():
                    feats[i] = np.load(cache / f"{key}.npy")
                elif key in todo:
                    todo[key][1].append(i)
                else:
                    image = decode_image(data, ref)
                    if boxes is None:
                        boxes = grid_boxes(image.width, image.height, grid)
                    todo[key] = (crop_image(image, boxes)[:max_crops], [i])
            except ImageError as e:
                errors[i] = e
        if todo:
            keys = list(todo)
            flat = [crop for k in keys for crop in todo[k][0]]
            encoded = self.encode(flat) if flat else np.zeros((0, self.feature_dim), dtype=np.float32)
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
            start = 0
            for key in keys:
                n = len(todo[key][0])
                vecs = encoded[start : start + n]
                start += n
                for i in todo[key][1]:
                    feats[i] = vecs
                if cache is not None:   # whole or not at all, as in encode_refs
                    tmp = cache / f"{key}.tmp{os.getpid()}.npy"
                    np.save(tmp, vecs)
                    os.replace(tmp, cache / f"{key}.npy")
        return feats, errors


# ---------------------------------------------------------------------------- crops
def grid_boxes(width: int, height: int, grid: int) -> list[Box]:
    """The cells of a `grid` x `grid` grid over a `width` x `height` image, row by row."""
    if grid <= 0:
        return []
    xs = [round(width * k / grid) for k in range(grid + 1)]
    ys = [round(height * k / grid) for k in range(grid + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(grid) for c in range(grid)]


def crop_image(image, boxes: Sequence[Box]) -> list:
    """The image's crops, each box clamped to the image; boxes left empty by the clamp are
    dropped (a detector's box may reach past the border)."""
    out = []
    for x0, y0, x1, y1 in boxes:
        x0, x1 = max(0, min(image.width, x0)), max(0, min(image.width, x1))
        y0, y1 = max(0, min(image.height, y0)), max(0, min(image.height, y1))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            out.append(image.crop((int(x0), int(y0), int(round(x1)), int(round(y1)))))
    return out


def read_regions(path: str | Path) -> dict[str, list[Box]]:
    """A regions side file: JSONL `{"image": ref, "boxes": [[x0, y0, x1, y1], ...]}` (pixels,
    x0 < x1 and y0 < y1) -> image reference -> boxes. Bad lines are reported on stderr and
    skipped (their images get the grid), as with the other side files."""
    path = Path(path)
    if not path.exists():
        raise GenLinkerError(f"regions file {path} does not exist")
    out: dict[str, list[Box]] = {}
    errors: list[RecordError] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                out[_region_image(data)] = [_box(b) for b in data["boxes"]]
            except (ValueError, KeyError, TypeError) as exc:
                errors.append(RecordError(f"needs {{\"image\": ref, \"boxes\": [[x0, y0, x1, y1], ...]}} with "
                                          f"x0 < x1, y0 < y1 ({exc})", source=str(path), line=lineno))
    if errors:
        print(f"warning: {len(errors)} unusable line(s) in {path}, first: {errors[0]}", file=sys.stderr)
    return out


def _region_image(data) -> str:
    ref = data.get("image") if isinstance(data, dict) else None
    if not isinstance(ref, str) or not ref:
        raise ValueError("no image reference")
    if not isinstance(data.get("boxes"), list):
        raise ValueError("boxes is not a list")
    return ref


def _box(b) -> Box:
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(isinstance(x, (int, float)) and
                                                                     not isinstance(x, bool) for x in b):
        raise ValueError(f"box {b!r} is not four numbers")
    x0, y0, x1, y1 = (float(x) for x in b)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box {b!r} is empty")
    return (x0, y0, x1, y1)


def _processor_for(image_size: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 image_mean=_CLIP_MEAN, image_std=_CLIP_STD)


def load_vision_encoder(spec: str) -> VisionEncoder:
    """`random:SEED` (a frozen, randomly initialised small CLIP) or a CLIP model folder / id."""
    if spec.startswith("random:"):
        return VisionEncoder.from_config(seed=int(spec.split(":", 1)[1]))
    return VisionEncoder(spec)
