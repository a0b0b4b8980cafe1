"""Prompt templates (YAML in `prompts/`) and rendering of in-context prompts.

A template is data, not code, so a user can try another prompt without touching the linker;
the one shipped is GEMEL's: a `[Text]...[Question]...[Answer]{name}` block per demonstration,
then the query block, whose continuation the LLM writes under the trie constraint.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from .errors import PromptTemplateError

DEFAULT_PROMPT = "gemel"
_SOURCE_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class Demonstration:
    """One in-context example: a sentence, its mention and the gold entity's name."""

    text: str
    mention: str
    name: str
    image: str | None = None


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    demonstration: str
    query: str
    name_end: str = "\n"
    header: str = ""
    image_slot: str = "before_text"
    description: str = ""
    # Optional candidate block (before the query) for candidates with descriptions:
    # `candidates` wraps the lines ({candidates}); `candidate` is one line ({name}, {description}).
    candidates: str = ""
    candidate: str = ""
    max_description_words: int = 30

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_PROMPT) -> "PromptTemplate":
        """A template by name (from `prompts/`, in a checkout or an installed package) or path."""
        path = find_template(name_or_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise PromptTemplateError(f"prompt template {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise PromptTemplateError(f"prompt template {path} must be a YAML mapping")
        missing = [k for k in ("demonstration", "query") if not data.get(k)]
        if missing:
            raise PromptTemplateError(f"prompt template {path} lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        data.setdefault("name", path.stem)
        return cls(**{k: v for k, v in data.items() if k in known})

    def render(self, text: str, mention: str, demos: Sequence[Demonstration] = (),
               candidates: Sequence[tuple[str, str | None]] = ()) -> str:
        """The full prompt: header, the demonstrations in the given order, the candidate block
        (when candidates are given), then the query."""
        return "".join(self.blocks(text, mention, demos, candidates))

    def blocks(self, text: str, mention: str, demos: Sequence[Demonstration] = (),
               candidates: Sequence[tuple[str, str | None]] = ()) -> list[str]:
        """The prompt's pieces: header, one per demonstration, the candidate block if any, the
        query. An image's soft prefix goes at the start of its block (`image_slot: before_text`)."""
        parts = [self.header]
        parts.extend(self.demonstration.format(text=d.text, mention=d.mention, name=d.name) for d in demos)
        if candidates:
            parts.append(self.candidate_block(candidates))
        parts.append(self.query.format(text=text, mention=mention))
        return parts

    def candidate_block(self, candidates: Sequence[tuple[str, str | None]]) -> str:
        """The candidates as (name, description) lines; descriptions cut to `max_description_words`."""
        if not self.candidate:
            raise PromptTemplateError(f"prompt template {self.name} has no candidate block: use a template with "
                                      "`candidates` and `candidate` (e.g. --prompt gemel_candidates)")
        lines = "".join(self.candidate.format(name=name, description=_cut(desc or "", self.max_description_words))
                        for name, desc in candidates)
        return self.candidates.format(candidates=lines) if self.candidates else lines


def _cut(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def find_template(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.exists():
            return path
        raise PromptTemplateError(f"prompt template file {path} does not exist")
    file = f"{name_or_path}.yaml"
    if (_SOURCE_PROMPTS / file).exists():
        return _SOURCE_PROMPTS / file
    try:
        packaged = resources.files("gen_linker.prompts") / file
        if packaged.is_file():
            return Path(str(packaged))
    except ModuleNotFoundError:
        pass
    raise PromptTemplateError(
        f"no prompt template named {name_or_path!r}: give a YAML file path or one of "
        f"{', '.join(available_templates()) or '(none found)'}")


def available_templates() -> list[str]:
    if _SOURCE_PROMPTS.is_dir():
        return sorted(p.stem for p in _SOURCE_PROMPTS.glob("*.yaml"))
    try:
        return sorted(Path(str(p)).stem for p in resources.files("gen_linker.prompts").iterdir()
                      if str(p).endswith(".yaml"))
    except ModuleNotFoundError:
        return []
