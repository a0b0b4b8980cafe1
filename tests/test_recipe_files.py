"""The committed recipes in adapters/ are checked (keys, values) without training anything, so a
typo in one fails here rather than an hour into `gen-linker train`."""
from pathlib import Path

import pytest

from gen_linker.errors import GenLinkerError
from gen_linker.recipes import check_recipe

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
RECIPES = sorted(ADAPTERS.glob("*.yaml"))


def test_the_repository_has_the_recipes_the_docs_name():
    names = {p.stem for p in RECIPES}
    assert {"default", "wikimel-lora", "wikimel-rerankers", "synthetic", "wikimel-judge"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_committed_recipe_is_valid(recipe):
    assert check_recipe(recipe) in ("images", "choose", "judge", "linker")


@pytest.mark.parametrize("text, named", [
    ("task: linker\ndata: {path: x}\nchoose: {mentions: 10, epoch: 1}\n", "epoch"),
    ("task: linker\ndata: {path: x}\nfusions: {}\n", "fusions"),
    ("task: choose\ndata: {path: x, sead: 1}\n", "sead"),
    ("task: choose\ncandidates: 8\n", "lacks kb and train"),
    ("task: rank\n", "unknown task"),
    ("task: judge\ndata: {path: x}\n", "is required"),
    ("task: judge\ndata: {path: x}\nllm: q\nhard_share: 2\n", "hard_share in"),
])
def test_a_wrong_key_is_named_with_the_file(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(GenLinkerError) as e:
        check_recipe(path)
    assert named in str(e.value) and str(path) in str(e.value)
