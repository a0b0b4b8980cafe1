"""Training the linear mapper with the vision encoder and the LLM frozen (GEMEL's recipe).

Loss: the language-model loss of the gold entity's name (and the end token) after the prompt,
which holds the retrieved demonstrations and every block's image prefix. LoRA layers added to
the LLM beforehand (`gen_linker.lora.add_lora`) are trained with the mapper. AdamW, gradient
accumulation, a dev-set Top-1 check after each epoch with the best mapper kept, and a
checkpoint after each epoch so that a killed run resumes where it stopped.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoints import TrainReport, has_state, read_state, write_state
from .errors import GenLinkerError
from .evaluation import top1
from .linkers.generative import GenerativeLinker, image_refs
from .lora import lora_parameters
from .mapper import LinearMapper
from .schema import Mention


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8          # examples per optimizer step (gradient accumulation inside)
    seed: int = 0


def name_loss(linker: GenerativeLinker, mention: Mention, demos, features: list[np.ndarray | None]) -> torch.Tensor:
    """Summed negative log-likelihood of the gold name + end token after the image-prefixed prompt."""
    backend, mapper = linker.backend, linker.images.mapper
    prefixes = [None if f is None else mapper(torch.as_tensor(f, dtype=torch.float32)[None])[0] for f in features]
    prompt = linker.with_prefixes(mention, demos, prefixes)
    target = backend.tokenizer(linker.kb.get(mention.gold).name, add_special_tokens=False)["input_ids"]
    target = target + [linker.end_token]
    inputs = torch.cat([prompt, backend.embed(target).to(prompt.dtype)])
    logits = backend.model(inputs_embeds=inputs[None].to(backend.device)).logits[0, len(prompt) - 1 : -1]
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target, device=logits.device), reduction="sum")


def train_mapper(linker: GenerativeLinker, train: Sequence[Mention], dev: Sequence[Mention] = (),
                 config: TrainConfig | None = None, output: str | Path | None = None,
                 progress: bool = True) -> TrainReport:
    """Train `linker.images.mapper` in place (hf backend). With `output`, the best mapper is
    saved in `output/best` and a checkpoint in `output/checkpoint` after each epoch; calling
    again with the same output resumes after the last finished epoch."""
    from tqdm import tqdm

    if linker.images is None:
        raise GenLinkerError("the linker has no image prefixer (vision encoder + mapper) to train")
    if not hasattr(linker.backend, "model"):
        raise GenLinkerError("mapper training needs the hf backend (it back-propagates through the LLM)")
    config = config or TrainConfig()
    examples = [m for m in train if m.gold is not None and m.gold in linker.kb]
    if not examples:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    mapper: LinearMapper = linker.images.mapper
    model = linker.backend.model
    model.requires_grad_(False)
    lora = lora_parameters(model)   # LoRA layers, if any were added
    for p in lora.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([*mapper.parameters(), *lora.values()], lr=config.lr,
                                  weight_decay=config.weight_decay)
    report, start = TrainReport(), 0
    out = Path(output) if output else None
    if out is not None and has_state(out / "checkpoint"):
        start, report = _load_checkpoint(out / "checkpoint", mapper, lora, optimizer)

    # Demonstrations and image features are fixed: retrieve and encode once.
    demos = [linker.prompt_ids(m, d)[1] for m, d in
             zip(examples, linker.retriever.retrieve(examples, linker.config.num_demos))]
    features = [linker.images.features(image_refs(m, d)) for m, d in zip(examples, demos)]

    rng = random.Random(config.seed)
    for epoch in range(start, config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        mapper.train()
        total, bar = 0.0, tqdm(order, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="ex")
        for step, i in enumerate(bar, 1):
            loss = name_loss(linker, examples[i], demos[i], features[i])
            (loss / config.batch_size).backward()
            total += float(loss.detach())
            if step % config.batch_size == 0 or step == len(order):
                optimizer.step()
                optimizer.zero_grad()
            bar.set_postfix(loss=f"{total / step:.3f}")
        mapper.eval()
        report.epoch_loss.append(total / len(order))
        if dev:
            report.dev_top1.append(dev_top1(linker, dev))
            if report.best_epoch is None or report.dev_top1[-1] > report.dev_top1[report.best_epoch]:
                report.best_epoch = epoch
                if out is not None:
                    _save_weights(out / "best", mapper, lora)
        if out is not None:
            _save_checkpoint(out / "checkpoint", mapper, lora, optimizer, epoch + 1, report)
    return report


@torch.no_grad()
def dev_top1(linker: GenerativeLinker, dev: Sequence[Mention]) -> float:
    results = linker.link(list(dev))
    return top1(results, dev)


def _save_weights(folder: Path, mapper: LinearMapper, lora: dict[str, torch.Tensor]) -> None:
    """The mapper, and the LoRA weights by parameter name when training has any."""
    from safetensors.torch import save_file

    mapper.save(folder)
    if lora:
        save_file({n: p.detach().contiguous() for n, p in lora.items()}, str(folder / "lora.safetensors"))


def load_weights(folder: Path, mapper: LinearMapper, lora: dict[str, torch.Tensor]) -> None:
    """Inverse of `_save_weights`, into the live mapper and LoRA parameters."""
    from safetensors.torch import load_file

    mapper.load_state_dict(LinearMapper.load(folder).state_dict())
    if lora:
        with torch.no_grad():
            for n, value in load_file(str(folder / "lora.safetensors")).items():
                lora[n].copy_(value)


def _save_checkpoint(folder: Path, mapper: LinearMapper, lora: dict, optimizer, epochs_done: int,
                     report: TrainReport) -> None:
    _save_weights(folder, mapper, lora)
    write_state(folder, optimizer, epochs_done, report)


def _load_checkpoint(folder: Path, mapper: LinearMapper, lora: dict, optimizer) -> tuple[int, TrainReport]:
    load_weights(folder, mapper, lora)
    return read_state(folder, optimizer)
