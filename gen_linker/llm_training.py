"""Task-tuning the LLM to choose: LoRA layers trained to write the gold entity's name after a
prompt that lists the retrieved candidates with their descriptions (UniMEL's recipe, on a model
60 times smaller).

Each training example is one mention's prompt: optional demonstrations, the top-C retrieved
candidates in a shuffled order (so that position carries no answer), and the query; the
target is the gold name and the template's end token. In a share of examples (`drop_gold`)
the gold is taken out of the list, as happens at test time when retrieval misses it, so the
model learns that a list may not hold the answer (the KB-trie retry then has something to
find). Loss: the summed negative log-likelihood of the target tokens; AdamW on the LoRA
parameters only, a few examples per step, padded into one forward pass. A checkpoint every
`checkpoint_every` steps (LoRA weights, optimizer, position in the seeded order) lets a killed
run resume where it stopped; the dev Top-1 (candidates scored by the model) is measured at the
end of each epoch, and the best LoRA kept.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import GenLinkerError
from .schema import Mention


@dataclass
class ChoiceTrainConfig:
    candidates: int = 8               # C: candidates listed in the prompt
    drop_gold: float = 0.1            # share of examples whose list lacks the gold
    num_demos: int = 0                # demonstrations in a prompt: 0..num_demos (random per example)
    mentions: int | None = None       # training mentions used (a seeded sample; None: all)
    epochs: int = 1
    lr: float = 3e-4
    warmup: int = 20                  # optimizer steps of linear warm-up
    batch_size: int = 8               # examples per optimizer step
    micro_batch: int = 4              # examples per forward pass (padded together)
    dev_mentions: int = 200           # dev mentions scored after each epoch (and every dev_every steps)
    dev_every: int | None = None      # optimizer steps between dev checks (the learning curve)
    checkpoint_every: int = 100       # optimizer steps between checkpoints
    max_minutes: float | None = None  # stop (and keep what was learned) after this many minutes of training
                                      # in all: a resumed run counts the time before (raise it to go on)
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "targets": ["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]})
    seed: int = 0


@dataclass
class ChoiceReport:
    examples: int = 0
    steps: int = 0
    train_s: float = 0.0
    loss_curve: list[float] = field(default_factory=list)        # mean loss per checkpoint interval
    dev_top1: list[float] = field(default_factory=list)          # per epoch
    dev_curve: list[tuple[int, float]] = field(default_factory=list)   # (examples seen, dev Top-1)
    best_epoch: int | None = None
    peak_rss_gb: float | None = None
    stopped_early: bool = False


def choice_lists(linker, mentions: Sequence[Mention], k: int, drop_gold: float, rng: random.Random
                 ) -> list[list[tuple[str, str | None]]]:
    """Per mention, the (name, description) lines of its training prompt: the top-k retrieved
    distinct names, the gold in (or, in a `drop_gold` share, out), shuffled."""
    kb = linker.kb
    out = []
    for m, cands in zip(mentions, linker.candidates.retrieve(mentions, 3 * k)):
        gold = kb.get(m.gold)
        names: dict[str, str | None] = {}
        for c in cands:
            if c.name != gold.name:
                names.setdefault(c.name, linker.description(c.entity_id))
        others = list(names.items())
        if rng.random() < drop_gold:
            lines = others[:k]
        else:
            lines = others[: k - 1] + [(gold.name, linker.description(gold.id))]
        rng.shuffle(lines)
        out.append(lines)
    return out


def _example_ids(linker, mention: Mention, demos, lines) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids): the prompt and the gold name with the end token."""
    ids, _ = linker.prompt_ids(mention, demos, lines)
    target = linker.backend.tokenizer(linker.kb.get(mention.gold).name, add_special_tokens=False)["input_ids"]
    return ids, list(target) + [linker.end_token]


def _batch_loss(model, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Summed target NLL of a few (prompt, target) pairs, right-padded into one forward pass."""
    seqs = [p + t for p, t in batch]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, ((p, t), s) in enumerate(zip(batch, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(p): len(s)] = torch.tensor(t)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")


def train_choice(linker, train: Sequence[Mention], dev: Sequence[Mention] = (),
                 config: ChoiceTrainConfig | None = None, output: str | Path | None = None,
                 progress: bool = True) -> ChoiceReport:
    """Train LoRA layers (added here) on `linker.backend` (hf) to choose among candidates; the
    linker's prompt template must have a candidate block. `output`: checkpoints go to
    `output/checkpoint`, the best LoRA to `output/best`; rerunning resumes."""
    import resource

    from tqdm import tqdm

    config = config or ChoiceTrainConfig()
    if not hasattr(linker.backend, "model"):
        raise GenLinkerError("LoRA training needs the hf backend (it back-propagates through the LLM)")
    examples = [m for m in train if m.gold is not None and m.gold in linker.kb]
    if not examples:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    rng = random.Random(config.seed)
    if config.mentions and config.mentions < len(examples):
        examples = rng.sample(examples, config.mentions)
    model = linker.backend.model
    params, optimizer, out, report, step = start_lora_training(model, config, output, len(examples))

    # Prompts are fixed per epoch: candidates, gold-dropping and demonstrations drawn once, seeded.
    lists = choice_lists(linker, examples, config.candidates, config.drop_gold, random.Random(config.seed + 1))
    n_demos = [rng.randint(0, config.num_demos) for _ in examples]
    demos = linker.retriever.retrieve(examples, config.num_demos) if config.num_demos else [[] for _ in examples]
    demos = [d[len(d) - n:] if n else [] for d, n in zip(demos, n_demos)]     # the n closest
    encoded = [_example_ids(linker, m, d, lines) for m, d, lines in zip(examples, demos, lists)]
    steps_per_epoch, total_steps = step_counts(len(encoded), config)
    pad = linker.backend.tokenizer.pad_token_id
    pad = pad if pad is not None else linker.end_token
    t_start, interval = time.perf_counter() - report.train_s, []
    bar = tqdm(total=total_steps, initial=step, desc="LoRA (choose)", unit="step", disable=not progress)
    model.train()
    while step < total_steps:
        chunk = batch_at(step, len(encoded), config)
        chunk.sort(key=lambda j: len(encoded[j][0]))
        lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup)) * max(0.05, 1 - step / max(1, total_steps))
        for g in optimizer.param_groups:
            g["lr"] = lr
        n_tokens = sum(len(encoded[j][1]) for j in chunk)
        total = 0.0
        for start in range(0, len(chunk), config.micro_batch):
            loss = _batch_loss(model, [encoded[j] for j in chunk[start: start + config.micro_batch]], pad)
            (loss / n_tokens).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        interval.append(total / n_tokens)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(interval[-20:]):.3f}")
        over_time = step_done(report, config, step, t_start)
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps or over_time
        curve_point = bool(config.dev_every) and step % config.dev_every == 0 and not end_of_epoch
        if dev and curve_point:
            model.eval()
            report.dev_curve.append((step * config.batch_size,
                                     choice_top1(linker, dev[: config.dev_mentions], config.candidates)))
            model.train()
        if end_of_epoch and dev:
            model.eval()
            top1 = choice_top1(linker, dev[: config.dev_mentions], config.candidates)
            model.train()
            report.dev_top1.append(top1)
            report.dev_curve.append((step * config.batch_size, top1))
            if report.best_epoch is None or top1 > report.dev_top1[report.best_epoch]:
                report.best_epoch = len(report.dev_top1) - 1
                if out is not None:
                    _save_weights(out / "best", params)
        interval = end_interval(report, interval, step % config.checkpoint_every == 0 or end_of_epoch, out, params,
                                optimizer, step, config)
        if over_time:
            report.stopped_early = True
            break
    bar.close()
    model.eval()
    if out is not None and report.best_epoch is not None and (out / "best" / "lora.safetensors").exists():
        _load_weights(out / "best", params)
    report.peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return report


def step_counts(n_examples: int, config) -> tuple[int, int]:
    """Optimizer steps per epoch and in all, `config.batch_size` examples per step."""
    per_epoch = (n_examples + config.batch_size - 1) // config.batch_size
    return per_epoch, per_epoch * config.epochs


def batch_at(step: int, n_examples: int, config) -> list[int]:
    """The example indices of optimizer step `step`: each epoch a seeded shuffle, so a resumed
    run sees the same batches as an uninterrupted one."""
    per_epoch, _ = step_counts(n_examples, config)
    order = list(range(n_examples))
    random.Random(config.seed * 1000 + step // per_epoch).shuffle(order)
    i = step % per_epoch
    return order[i * config.batch_size: (i + 1) * config.batch_size]


def step_done(report: ChoiceReport, config, step: int, t_start: float) -> bool:
    """Record `step` and the training time so far (over every resumption: `t_start` is moved
    back by a resumed run's time) in `report`; whether that passes `config.max_minutes`."""
    report.steps, report.train_s = step, time.perf_counter() - t_start
    return config.max_minutes is not None and report.train_s > 60 * config.max_minutes


def end_interval(report: ChoiceReport, interval: list[float], due: bool, out: Path | None, params, optimizer,
                 step: int, config) -> list[float]:
    """At a checkpoint (`due`): the interval's mean loss joins the loss curve, the checkpoint is
    written to `out/checkpoint` (when there is an `out`) and a new interval starts; otherwise
    the interval goes on."""
    if not due:
        return interval
    report.loss_curve.append(float(np.mean(interval)))
    if out is not None:
        _save_checkpoint(out / "checkpoint", params, optimizer, step, report, config)
    return []


def start_lora_training(model: torch.nn.Module, config, output: str | Path | None, examples: int):
    """Fresh LoRA layers (`config.lora`) on the frozen `model`, AdamW over them (`config.lr`,
    seeded by `config.seed`), and where `output/checkpoint` holds a killed run's state, that
    state: (params, optimizer, output folder or None, report, step)."""
    from .lora import LoraSpec, add_lora

    torch.manual_seed(config.seed)
    model.requires_grad_(False)
    params = add_lora(model, LoraSpec.from_recipe(config.lora))
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
    out = Path(output) if output else None
    report, step = ChoiceReport(examples=examples), 0
    saved = _checkpoint_folder(out / "checkpoint") if out is not None else None
    if saved is not None:
        step, report = _load_checkpoint(saved, params, optimizer, config)
    return params, optimizer, out, report, step


@torch.no_grad()
def choice_top1(linker, mentions: Sequence[Mention], k: int) -> float:
    """Top-1 of the LLM choosing among the top-k retrieved candidates (scored exhaustively)."""
    mentions = [m for m in mentions if m.gold is not None]
    if not mentions:
        return 0.0
    results = linker.choose(mentions, k)
    return float(np.mean([r.entity_id == m.gold for r, m in zip(results, mentions)]))


# ---------------------------------------------------------------------------- checkpoints
def _save_weights(folder: Path, params: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in params.items()}, str(folder / "lora.safetensors"))


def _load_weights(folder: Path, params: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import load_file

    with torch.no_grad():
        for n, value in load_file(str(folder / "lora.safetensors")).items():
            params[n].copy_(value)


# What may change between a killed run and its resumption (the rest decides what a step means).
RESUMABLE_CHANGES = {"max_minutes", "dev_mentions", "dev_every", "checkpoint_every"}


def _trained_config(config) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}


def _save_checkpoint(folder: Path, params, optimizer, step: int, report: ChoiceReport, config) -> None:
    """The LoRA weights, optimizer, step, report and training config, written whole: into a
    fresh folder renamed over the old one, so a kill mid-write leaves the previous checkpoint."""
    import shutil

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_weights(tmp, params)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "report": asdict(report), "config": _trained_config(config)}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_folder(folder: Path) -> Path | None:
    """Where a killed run's checkpoint is: `folder`, or `folder.old` when the run was killed
    between `_save_checkpoint`'s two renames; None when there is none."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def _load_checkpoint(folder: Path, params, optimizer, config) -> tuple[int, ChoiceReport]:
    """A killed run's state; one trained with other settings (other than RESUMABLE_CHANGES) or
    unreadable is an error naming the folder, not a silent mix of two runs. (A checkpoint from
    before configs were saved is taken as it is.)"""
    state = json.loads((folder / "state.json").read_text())
    saved, current = state.get("config"), json.loads(json.dumps(_trained_config(config)))   # as JSON reads back
    if saved is not None and saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise GenLinkerError(f"the checkpoint {folder} was trained with other settings ({', '.join(changed)}): "
                             "delete it to start again, or restore the recipe's values")
    try:
        _load_weights(folder, params)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    except Exception as e:
        raise GenLinkerError(f"the checkpoint {folder} cannot be loaded ({e}): delete it to start again") from e
    report = ChoiceReport(**{**state["report"], "dev_curve": [tuple(x) for x in state["report"]["dev_curve"]]})
    report.stopped_early = False        # resumed: the card says whether *this* run stopped early
    return int(state["step"]), report
