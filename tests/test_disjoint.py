"""The entity-disjoint split: new entities never reach train/dev, the k-shot examples come from
their train/dev mentions (never test), are nested and seeded, and the files a few-shot suite
reads (shots-K, train+shots-K) are written as such."""
import json

from gen_linker.datasets.disjoint import entity_disjoint, write_split
from gen_linker.schema import Mention


def mentions(prefix: str, n: int) -> list[Mention]:
    return [Mention(f"{prefix}{i}", f"{prefix} sentence {i} about y", "y", gold=f"E{i % 20}") for i in range(n)]


def test_split_keeps_new_entities_out_of_training_and_writes_the_few_shot_pools(tmp_path):
    train, dev, test = mentions("tr", 120), mentions("dv", 40), mentions("te", 40)
    split = entity_disjoint(train, dev, test, 0.2, seed=0)
    assert len(split.new_entities) == 4 and split.new_entities == entity_disjoint(train, dev, test, 0.2, 0).new_entities
    assert not {m.gold for m in split.train + split.dev} & split.new_entities
    assert {m.gold for m in split.test_new} <= split.new_entities and split.test_new
    assert split.shots(4) == split.shots(8)[:4] and all(m.id[:2] in ("tr", "dv") for m in split.shots(8))
    counts = write_split(split, tmp_path, shots=(4, 8))
    assert counts["test_new"] == len(split.test_new) and counts["shots"] == [4, 8]

    def ids(name: str) -> list[str]:
        return [json.loads(line)["id"] for line in (tmp_path / name).read_text().splitlines()]

    for k in (4, 8):
        assert ids(f"shots-{k}.jsonl") == [m.id for m in split.shots(k)]
        assert ids(f"train+shots-{k}.jsonl") == [m.id for m in split.train] + ids(f"shots-{k}.jsonl")
