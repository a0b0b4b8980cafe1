"""Learned fusion: one small model turns each candidate's features into a score, and a softmax
over the mention's candidates plus a "none of these" (NIL) option into calibrated confidences.

- Scorer: `linear` (a weight per feature) or `mlp` (one hidden layer), the same for every
  candidate, trained listwise: the cross-entropy of the gold candidate's softmax share (a
  conditional logit). Mentions whose gold was not retrieved train the NIL option instead.
- Calibration: a temperature and the NIL option's score, fitted on a held-out part of the dev
  data by likelihood, so that the top answer's share is the chance that it is right, and a
  mention the candidates do not cover gets a low confidence (`--nil-threshold` acts on it).

Fitted on a dev split, never on test: `fit` takes the ids of the mentions it reads and
`FusionModel.card` keeps them, so a test can check that no test id went in. A saved model is a
folder: `fusion.safetensors` (weights, feature normalisation) + `fusion.yaml` (feature names,
sizes, calibration, the dev report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from torch import nn

from .errors import GenLinkerError

WEIGHTS, CARD = "fusion.safetensors", "fusion.yaml"


@dataclass
class FusionExample:
    """One mention's candidates as features, and which is the gold (None: not among them)."""

    features: np.ndarray        # [candidates, features]
    gold: int | None
    mention_id: str = ""


@dataclass
class FusionConfig:
    kind: str = "mlp"           # linear | mlp
    hidden: int = 32
    epochs: int = 300
    patience: int = 15          # epochs without a better held-out likelihood before stopping
    lr: float = 0.01
    weight_decay: float = 1e-4
    held_out: float = 0.2       # share of the dev data kept for early stopping and calibration
    seed: int = 0
    anchor: float = 0.0         # warm start: L2 pull of the weights towards the starting model's


class FusionModel(nn.Module):
    def __init__(self, feature_names: Sequence[str], kind: str = "mlp", hidden: int = 32) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise GenLinkerError(f"unknown fusion kind {kind!r}: use linear or mlp")
        self.feature_names, self.kind, self.hidden = list(feature_names), kind, hidden
        n = len(self.feature_names)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.net = nn.Linear(n, 1) if kind == "linear" else nn.Sequential(nn.Linear(n, hidden), nn.Tanh(),
                                                                           nn.Linear(hidden, 1))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("nil_score", torch.tensor(-5.0))
        self.card: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., features]` -> raw scores `[...]`."""
        return self.net((x - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def scores(self, features: np.ndarray) -> np.ndarray:
        """Raw fused scores of one mention's candidates."""
        if len(features) == 0:
            return np.zeros(0)
        return self(torch.as_tensor(features, dtype=torch.float32)).double().numpy()

    def confidences(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of each candidate (the rest is NIL's)."""
        t, nil = float(self.temperature), float(self.nil_score)
        z = np.concatenate([np.asarray(scores, dtype=np.float64), [nil]]) / t
        z = np.exp(z - z.max())
        return (z / z.sum())[:-1]

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        card = {"kind": self.kind, "hidden": self.hidden, "features": self.feature_names,
                "temperature": float(self.temperature), "nil_score": float(self.nil_score), **self.card}
        (folder / CARD).write_text(yaml.safe_dump(card, sort_keys=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "FusionModel":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CARD, WEIGHTS):
            if not (folder / name).exists():
                raise GenLinkerError(f"fusion model {folder} lacks {name}: train one with gen-linker train-fusion")
        try:
            card = yaml.safe_load((folder / CARD).read_text())
            model = cls(card["features"], card["kind"], card.get("hidden", 32))
            model.load_state_dict(load_file(str(folder / WEIGHTS)))
        except (SafetensorError, yaml.YAMLError, KeyError, RuntimeError, OSError) as e:
            raise GenLinkerError(f"fusion model {folder} is unreadable or corrupt ({type(e).__name__}: {e}): "
                                 f"retrain it with gen-linker train-fusion") from None
        model.card = {k: v for k, v in card.items() if k not in ("kind", "hidden", "features", "temperature",
                                                                  "nil_score")}
        return model.eval()


# ---------------------------------------------------------------------------- fitting
def _batches(examples: Sequence[FusionExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded `[B, C, F]` features, `[B, C]` mask, `[B]` targets (C = NIL)."""
    width = max(len(e.features) for e in examples)
    n_feat = examples[0].features.shape[1]
    x = torch.zeros(len(examples), width, n_feat)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    y = torch.full((len(examples),), width, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, : len(e.features)] = torch.as_tensor(e.features, dtype=torch.float32)
        mask[i, : len(e.features)] = True
        if e.gold is not None:
            y[i] = e.gold
    return x, mask, y


def _nll(model: FusionModel, x, mask, y, temperature=None, nil=None) -> torch.Tensor:
    s = model(x).masked_fill(~mask, float("-inf"))
    t = model.temperature if temperature is None else temperature
    n = model.nil_score if nil is None else nil
    logits = torch.cat([s, n.expand(len(s), 1)], 1) / t
    return nn.functional.cross_entropy(logits, y)


@dataclass
class FusionReport:
    dev_mentions: int = 0
    fit_top1: float = 0.0
    held_out_top1: float = 0.0
    held_out_nll: float = 0.0
    temperature: float = 1.0
    nil_score: float = 0.0
    epochs_run: int = 0
    mention_ids: list[str] = field(default_factory=list)


def fit(examples: Sequence[FusionExample], feature_names: Sequence[str], config: FusionConfig | None = None,
        init: FusionModel | None = None) -> tuple[FusionModel, FusionReport]:
    """Fit a fusion model on dev examples (a held-out share for early stopping and calibration).
    `init`: a fitted model to start from (`gen-linker adapt` on a handful of examples): its
    feature scaling is kept and `config.anchor` holds the weights near its own."""
    config = config or FusionConfig()
    examples = [e for e in examples if len(e.features)]
    if len(examples) < 10:
        raise GenLinkerError(f"fusion needs at least 10 dev mentions with candidates, got {len(examples)}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(examples))
    n_held = max(2, int(round(config.held_out * len(examples))))
    held, train = [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]
    xt, mt, yt = _batches(train)
    xh, mh, yh = _batches(held)
    anchor = None
    if init is not None:
        if list(init.feature_names) != list(feature_names):
            raise GenLinkerError("the starting fusion model has other features than the examples")
        model = FusionModel(feature_names, init.kind, init.hidden)
        model.load_state_dict(init.state_dict())
        anchor = [p.detach().clone() for p in model.net.parameters()]
    else:
        model = FusionModel(feature_names, config.kind, config.hidden)
        allf = np.concatenate([e.features for e in train])
        model.mean.copy_(torch.as_tensor(allf.mean(0), dtype=torch.float32))
        model.std.copy_(torch.as_tensor(allf.std(0) + 1e-3, dtype=torch.float32))
        with torch.no_grad():   # the NIL option starts at the share of dev mentions it should win
            miss = float((yt == xt.shape[1]).float().mean())
            model.nil_score.fill_(math.log(max(miss, 1e-3) / (1 - miss + 1e-6)) - 2.0)
    opt = torch.optim.Adam(model.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, patience = float("inf"), None, 0
    if init is not None:    # the starting point is a candidate too: a refit that only overfits keeps it
        with torch.no_grad():
            best = float(_nll(model, xh, mh, yh, torch.tensor(1.0)))
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            idx = perm[start : start + 256]
            opt.zero_grad()
            loss = _nll(model, xt[idx], mt[idx], yt[idx], torch.tensor(1.0))
            if anchor is not None and config.anchor:
                loss = loss + config.anchor * sum(((p - a) ** 2).sum() for p, a in zip(model.net.parameters(), anchor))
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            held_loss = float(_nll(model, xh, mh, yh, torch.tensor(1.0)))
        if held_loss < best - 1e-4:
            best, best_state, patience = held_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            patience += 1
            if patience >= config.patience:
                break
    model.load_state_dict(best_state)
    if init is None or len(held) >= 50:     # a few held-out mentions cannot set a temperature: keep init's
        calibrate(model, xh, mh, yh)
    report = FusionReport(dev_mentions=len(examples), fit_top1=_top1(model, xt, mt, yt),
                          held_out_top1=_top1(model, xh, mh, yh), temperature=float(model.temperature),
                          nil_score=float(model.nil_score), epochs_run=epoch + 1,
                          mention_ids=[e.mention_id for e in examples])
    with torch.no_grad():
        report.held_out_nll = float(_nll(model, xh, mh, yh))
    model.card = {"report": {k: v for k, v in report.__dict__.items() if k != "mention_ids"},
                  "fitted_on_mentions": len(examples)}
    return model.eval(), report


def calibrate(model: FusionModel, x, mask, y, steps: int = 300) -> None:
    """The temperature and NIL score that make held-out confidences honest (likelihood)."""
    log_t = torch.zeros((), requires_grad=True)
    nil = model.nil_score.clone().requires_grad_(True)
    opt = torch.optim.Adam([log_t, nil], lr=0.05)
    with torch.no_grad():
        s = model(x).masked_fill(~mask, float("-inf"))
    for _ in range(steps):
        opt.zero_grad()
        logits = torch.cat([s, nil.expand(len(s), 1)], 1) / log_t.exp()
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.temperature.fill_(float(log_t.exp()))
        model.nil_score.fill_(float(nil))


def _top1(model: FusionModel, x, mask, y) -> float:
    with torch.no_grad():
        s = model(x).masked_fill(~mask, float("-inf"))
        return float((s.argmax(1) == y).float().mean())


def examples_top1(model: FusionModel, examples: Sequence[FusionExample]) -> float:
    """The share of examples whose gold candidate the model ranks first (a missed gold counts
    as wrong): how a fitted fusion is scored on mentions it was not fitted on."""
    return _top1(model, *_batches(examples))


# ---------------------------------------------------------------------------- calibration metrics
def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    conf, hit = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if not len(conf):
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - hit[inside].mean())
    return float(ece)
