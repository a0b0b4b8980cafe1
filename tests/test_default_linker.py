"""The shipped default linker: loads offline from the package, links the bundled sample with
the Top-1 its training recorded, and says clearly when one of its files is missing."""
import shutil

import pytest
import yaml

from gen_linker import datasets, load_linker
from gen_linker.cli import SAMPLE_DIR
from gen_linker.errors import GenLinkerError
from gen_linker.kb import KnowledgeBase
from gen_linker.loader import DEFAULT_LINKER, LINKER_FILE, read_spec

pytestmark = pytest.mark.real_models


def test_default_linker_ships_small_and_is_what_link_uses_without_flags():
    assert (DEFAULT_LINKER / LINKER_FILE).exists()
    size = sum(p.stat().st_size for p in DEFAULT_LINKER.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"the default's artefacts take {size / 2**20:.1f} MB (at most 10)"
    card = yaml.safe_load((DEFAULT_LINKER / "card.yaml").read_text())
    assert "MIT" in card["training_data_licence"] and card["recipe"] == "adapters/default.yaml"
    from gen_linker.cli import build_parser
    from gen_linker.linker_flags import spec_from_args

    args = build_parser().parse_args(["link", "--kb", "kb.jsonl", "--input", "in.jsonl", "--output", "o.jsonl"])
    assert spec_from_args(args) == read_spec(DEFAULT_LINKER)


def test_default_linker_links_the_bundled_sample_with_its_recorded_top1():
    card = yaml.safe_load((DEFAULT_LINKER / "card.yaml").read_text())
    recorded = card["sample_check"]
    kb = KnowledgeBase.from_jsonl(SAMPLE_DIR / "entities.jsonl")
    test = datasets.load(SAMPLE_DIR / "test.jsonl").valid[: recorded["mentions"]]
    spec = read_spec(DEFAULT_LINKER).merged({"backend.dtype": "float32",
                                             "generative.demos": str(SAMPLE_DIR / "train.jsonl")})
    results = load_linker(kb, spec).link(test)
    top1 = sum(r.entity_id == m.gold for r, m in zip(results, test)) / len(test)
    assert abs(top1 - recorded["top1"]) <= 0.02, (top1, recorded)
    assert all(r.confidence is not None and 0.0 <= r.confidence <= 1.0 for r in results)


@pytest.mark.parametrize("part", ["fusion/fusion.safetensors", "crossencoder/adapter_model.safetensors",
                                  "adapter/lora/adapter_model.safetensors"])
def test_a_missing_file_of_the_default_is_an_error_naming_it(tmp_path, part):
    copy = tmp_path / "default"
    shutil.copytree(DEFAULT_LINKER, copy)
    if not (copy / part).exists():
        pytest.skip(f"the default linker has no {part}")
    (copy / part).unlink()
    kb = KnowledgeBase.from_jsonl(SAMPLE_DIR / "entities.jsonl")
    with pytest.raises(GenLinkerError, match=part.split("/")[-1]):
        load_linker(kb, copy)
