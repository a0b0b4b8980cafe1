"""DIM's "expert" text: a captioner's caption of each mention image and its answer to an
identity question, from a BLIP-2-style image-text-to-text model in a user's folder
(transformers `AutoModelForImageTextToText` + `AutoProcessor`; no such model is on the package
registries, so none is bundled). `caption_mentions` writes the captions JSONL that
`train-dim` / `link --linker dim` read with `--captions`; it resumes a killed run and reports
bad images per mention.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .batch import completed_ids
from .errors import GenLinkerError, ImageError
from .schema import Mention
from .vision import decode_image, image_bytes

QUESTION = "Question: who or what is shown in this image? Answer:"


class Captioner:
    """Caption + identity answer per image, batched, greedy."""

    def __init__(self, model: str | Path, question: str = QUESTION, max_new_tokens: int = 30,
                 device: str = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(model).exists():
            raise GenLinkerError(f"captioner {model} does not exist (a BLIP-2-style model folder)")
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as e:
            raise GenLinkerError(f"captioner {model} could not be loaded: {e}") from e
        self.question, self.max_new_tokens, self.device = question, max_new_tokens, device

    @torch.no_grad()
    def _generate(self, images: Sequence, prompt: str | None) -> list[str]:
        kwargs = {"images": list(images), "return_tensors": "pt"}
        if prompt:
            kwargs.update(text=[prompt] * len(images), padding=True)
        inputs = self.processor(**kwargs).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if prompt:   # decoder-only models echo the prompt: keep what follows it
            out = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]

    def describe(self, images: Sequence) -> list[tuple[str, str]]:
        """(caption, answer) per PIL image."""
        return list(zip(self._generate(images, None), self._generate(images, self.question)))


@dataclass
class CaptionSummary:
    written: int = 0
    skipped: int = 0          # already in the output (resumed)
    no_image: int = 0
    errors: dict[str, str] = field(default_factory=dict)   # mention id -> why its image was unusable

    def line(self) -> str:
        return (f"{self.written} captioned, {self.skipped} already done, {self.no_image} without image, "
                f"{len(self.errors)} bad image(s)")


def caption_mentions(captioner: Captioner, mentions: Sequence[Mention], output: str | Path,
                     image_root: str | Path | None = None, batch_size: int = 8,
                     progress: bool = True) -> CaptionSummary:
    """Caption every mention's image into `output` (`{id, image, caption, answer}` per line),
    appending after the mentions a killed run already wrote."""
    from tqdm import tqdm

    output = Path(output)
    summary = CaptionSummary()
    done = set(completed_ids(output)) if output.exists() else set()
    todo = []
    for m in mentions:
        if m.id in done:
            summary.skipped += 1
        elif not m.image:
            summary.no_image += 1
        else:
            todo.append(m)
    output.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="captioning", unit="image", disable=not progress)
    with output.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch, images = [], []
            for m in todo[start : start + batch_size]:
                try:
                    images.append(decode_image(image_bytes(m.image, image_root), m.image))
                    batch.append(m)
                except ImageError as e:
                    summary.errors[m.id] = str(e)
            for m, (caption, answer) in zip(batch, captioner.describe(images) if images else []):
                f.write(json.dumps({"id": m.id, "image": m.image, "caption": caption, "answer": answer},
                                   ensure_ascii=False) + "\n")
                summary.written += 1
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(todo[start : start + batch_size]))
    bar.close()
    return summary
