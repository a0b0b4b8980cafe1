"""Task-tuning the judge LLM to choose (UniMEL's recipe): LoRA layers trained so that, asked the
multiple-choice question of `gen_linker.judge` over the retriever's top C, the LLM's next token
is the gold's letter.

Why letters and not names: one forward pass per question scores every option (a name would
take one pass per candidate on a 1.5B model, ~0.7 s each on 2 cores), and the loss is the
cross-entropy over the C letters' logits, exactly what the linker reads at test time.

The questions come from training mentions whose gold is among the retriever's top C, in the
retriever's order (as at test time); `hard_share` of them are ones where the retriever's first
is wrong, since a model trained on what the retriever already gets right learns to say "A".
AdamW on the LoRA parameters, constant learning rate, `batch_size` questions per step (one
forward each: the prompts differ in length and a batch of 1 was as fast on 2 cores). A
checkpoint every `checkpoint_every` steps lets a killed run resume; the dev Top-1 of the LLM
choosing alone (before training, every `dev_every` steps and at the end) is the learning curve.
"""
from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import GenLinkerError
from .judge import LLMJudge, options, question
from .kb import KnowledgeBase
from .llm_training import ChoiceReport, batch_at, end_interval, start_lora_training, step_counts, step_done
from .schema import Mention


@dataclass
class JudgeTrainConfig:
    candidates: int = 5               # C: the retriever's top C as lettered options
    mentions: int = 800               # training questions
    hard_share: float = 0.35          # share of questions whose retriever's first is wrong
    pool: int = 5000                  # training mentions retrieved to draw the questions from (seeded)
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 8               # questions per optimizer step
    dev_mentions: int = 100           # dev mentions the learning curve is measured on
    dev_every: int | None = None      # optimizer steps between dev checks
    checkpoint_every: int = 25        # optimizer steps between checkpoints
    max_minutes: float | None = None  # stop (and keep what was learned) after this many minutes of training
                                      # in all: a resumed run counts the time before (raise it to go on)
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05,
                                                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    seed: int = 0


@dataclass
class Question:
    mention: Mention
    entity_ids: list[str]
    text: str
    gold: int | None                  # the gold's option index (None: not among the options)


def questions(kb: KnowledgeBase, retriever, mentions: Sequence[Mention], k: int,
              descriptions: dict | None = None) -> list[Question]:
    """One question per mention over the retriever's top k, in its order."""
    out = []
    for m, cands in zip(mentions, retriever.retrieve(list(mentions), k)):
        ids = [c.entity_id for c in cands[:k]]
        out.append(Question(m, ids, question(m, options(kb, ids, descriptions)),
                            ids.index(m.gold) if m.gold in ids else None))
    return out


def training_questions(kb: KnowledgeBase, retriever, train: Sequence[Mention], config: JudgeTrainConfig,
                       descriptions: dict | None = None) -> list[Question]:
    """`config.mentions` questions from a seeded `pool` of training mentions, the gold among the
    options, `hard_share` of them with the gold not first; shuffled."""
    usable = [m for m in train if m.gold is not None and m.gold in kb]
    if not usable:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    rng = random.Random(config.seed)
    pool = rng.sample(usable, min(config.pool, len(usable)))
    asked = [q for q in questions(kb, retriever, pool, config.candidates, descriptions) if q.gold is not None]
    hard = [q for q in asked if q.gold > 0]
    easy = [q for q in asked if q.gold == 0]
    n_hard = min(len(hard), round(config.hard_share * config.mentions))
    chosen = hard[:n_hard] + easy[: config.mentions - n_hard]
    rng.shuffle(chosen)
    return chosen


def alone_top1(judge: LLMJudge, asked: Sequence[Question]) -> float:
    """Top-1 of the LLM choosing alone among each question's options (a question without the
    gold among them counts as wrong)."""
    if not asked:
        return 0.0
    logprobs = judge.letter_logprobs([q.text for q in asked], [len(q.entity_ids) for q in asked])
    return float(np.mean([q.gold is not None and int(np.argmax(lp)) == q.gold for q, lp in zip(asked, logprobs)]))


def _loss(judge: LLMJudge, q: Question) -> torch.Tensor:
    """Cross-entropy of the gold letter among the options' letters, at the answer's first token."""
    ids = torch.tensor([judge.tokenizer.encode(judge.prompt(q.text), add_special_tokens=False)])
    logits = judge.model(input_ids=ids).logits[0, -1].float()
    letters = logits[judge.letter_ids[: len(q.entity_ids)]]
    return torch.nn.functional.cross_entropy(letters[None], torch.tensor([q.gold]))


def train_judge(judge: LLMJudge, asked: Sequence[Question], dev: Sequence[Question] = (),
                config: JudgeTrainConfig | None = None, output: str | Path | None = None,
                progress: bool = True) -> ChoiceReport:
    """Train LoRA layers (added here, in place) on `judge.model` over the `asked` questions;
    `dev` questions give the learning curve. `output`: checkpoints in `output/checkpoint`
    (rerunning resumes)."""
    from tqdm import tqdm

    config = config or JudgeTrainConfig()
    asked = [q for q in asked if q.gold is not None]
    if not asked:
        raise GenLinkerError("no training question has its gold among the options")
    model = judge.model
    params, optimizer, out, report, step = start_lora_training(model, config, output, len(asked))

    def dev_point() -> None:
        model.eval()
        with torch.no_grad():
            report.dev_curve.append((step * config.batch_size, alone_top1(judge, dev)))
        model.train()

    _, total_steps = step_counts(len(asked), config)
    if dev and step == 0:
        dev_point()                                               # the untrained LLM: the curve's start
    t_start, interval = time.perf_counter() - report.train_s, []
    bar = tqdm(total=total_steps, initial=step, desc="LoRA (judge)", unit="step", disable=not progress)
    model.train()
    while step < total_steps:
        chunk = batch_at(step, len(asked), config)
        total = 0.0
        for j in chunk:                                           # one question per forward pass
            loss = _loss(judge, asked[j])
            (loss / len(chunk)).backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
        interval.append(total / len(chunk))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(interval[-10:]):.3f}")
        over_time = step_done(report, config, step, t_start)
        last = step == total_steps or over_time
        if dev and (last or (config.dev_every and step % config.dev_every == 0)):
            dev_point()
        interval = end_interval(report, interval, step % config.checkpoint_every == 0 or last, out, params, optimizer,
                                step, config)
        if over_time:
            report.stopped_early = True
            break
    bar.close()
    model.eval()
    report.peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return report


__all__ = ["JudgeTrainConfig", "Question", "alone_top1", "questions", "train_judge", "training_questions"]
