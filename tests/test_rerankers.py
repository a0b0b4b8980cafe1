"""Trained rerankers and learned fusion on tiny models built from configs: each training path
lowers its loss and changes the ranking; fusion never reads a test id; a missing or corrupt
artefact is an error naming the file."""
import numpy as np
import pytest

from conftest import ENTITIES, TEST, TRAIN
from gen_linker.errors import GenLinkerError
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity, Mention

KB = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])
LABELLED = [Mention.from_dict(r) for r in TRAIN + TEST]


@pytest.fixture(scope="module")
def retriever(tiny_bert):
    from gen_linker.candidates import CandidateRetriever

    return CandidateRetriever(KB, str(tiny_bert))


def listwise_loss_and_top1(scores_per_mention, gold_positions):
    """Mean softmax cross-entropy of the gold in each list, and the share ranked first."""
    losses, hits = [], []
    for s, g in zip(scores_per_mention, gold_positions):
        s = np.asarray(s, dtype=float)
        losses.append(float(np.log(np.exp(s - s.max()).sum()) + s.max() - s[g]))
        hits.append(int(np.argmax(s) == g))
    return float(np.mean(losses)), float(np.mean(hits))


def groups(retriever):
    """Each labelled mention with all KB entities as its list (gold position known)."""
    ids = [e["id"] for e in ENTITIES]
    return LABELLED, [ids for _ in LABELLED], [ids.index(m.gold) for m in LABELLED]


def test_cross_encoder_training_lowers_its_loss_and_changes_the_ranking(tiny_bert, retriever, tmp_path):
    from gen_linker.rerankers import CrossEncoderScorer, RerankerConfig, train_reranker

    mentions, lists, gold = groups(retriever)
    config = RerankerConfig(kind="crossencoder", base=str(tiny_bert), epochs=30, lr=1e-2, batch_size=4,
                            negatives=5, candidates=10, max_length=64)
    untrained = tmp_path / "untrained"
    train_reranker(KB, LABELLED, untrained, retriever, RerankerConfig(**{**config.__dict__, "epochs": 0}),
                   progress=False)
    report = train_reranker(KB, LABELLED, tmp_path / "ce", retriever, config, progress=False)
    before = CrossEncoderScorer(untrained, KB).score(mentions, lists)
    after = CrossEncoderScorer(tmp_path / "ce", KB).score(mentions, lists)
    (loss0, top0), (loss1, top1) = listwise_loss_and_top1(before, gold), listwise_loss_and_top1(after, gold)
    assert loss1 < loss0 and top1 > top0, (loss0, loss1, top0, top1)
    assert report.examples == len(LABELLED)
    # a LoRA folder: small, and the same scores once loaded again
    assert (tmp_path / "ce" / "adapter_model.safetensors").stat().st_size < 1_000_000
    again = CrossEncoderScorer(tmp_path / "ce", KB).score(mentions, lists)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(after, again))


def test_bi_encoder_training_lowers_its_loss_and_serves_as_the_dense_retriever(tiny_bert, retriever, tmp_path):
    from gen_linker.candidates import entity_text, mention_text
    from gen_linker.encoders import SentenceEncoder
    from gen_linker.rerankers import RerankerConfig, train_reranker

    mentions, lists, gold = groups(retriever)
    entity_texts = [entity_text(e["name"], e.get("description")) for e in ENTITIES]

    def scores(encoder):
        q = encoder.encode([mention_text(m) for m in mentions])
        return list(20 * q @ encoder.encode(entity_texts).T)

    before = scores(SentenceEncoder(str(tiny_bert)))
    config = RerankerConfig(kind="biencoder", base=str(tiny_bert), epochs=8, lr=5e-4, batch_size=4, negatives=1, full=True,
                            candidates=10, max_length=64)
    train_reranker(KB, LABELLED, tmp_path / "bi", retriever, config, progress=False)
    trained = SentenceEncoder(str(tmp_path / "bi"))          # the folder works wherever an encoder does
    after = scores(trained)
    (loss0, top0), (loss1, top1) = listwise_loss_and_top1(before, gold), listwise_loss_and_top1(after, gold)
    assert loss1 < loss0 and top1 > top0, (loss0, loss1, top0, top1)


def test_choosing_lora_lowers_its_loss_and_changes_the_llm_choice(tiny_llm, tmp_path):
    from gen_linker.backends.hf import HFBackend
    from gen_linker.demonstrations import make_retriever
    from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker
    from gen_linker.llm_training import ChoiceTrainConfig, choice_top1, train_choice

    backend = HFBackend(str(tiny_llm), dtype="float32")
    config = GenerativeConfig(num_demos=0, prompt="choose", candidates_in_prompt=4, trie_scope="candidates",
                              num_beams=4)
    linker = GenerativeLinker(KB, backend, make_retriever("none", []), config)
    before = choice_top1(linker, LABELLED, 4)
    report = train_choice(linker, LABELLED, (), ChoiceTrainConfig(candidates=4, drop_gold=0.0, epochs=8, lr=5e-3,
                                                                 batch_size=4, micro_batch=4, checkpoint_every=1000),
                          tmp_path / "training", progress=False)
    after = choice_top1(linker, LABELLED, 4)
    assert report.loss_curve[-1] < 0.5 * report.loss_curve[0], report.loss_curve
    assert after > before, (before, after)


def synthetic_examples(n, rng, informative=0):
    """Lists of 6 candidates with 3 features; feature `informative` is highest for the gold."""
    from gen_linker.fusion import FusionExample

    out = []
    for i in range(n):
        x = rng.normal(size=(6, 3)).astype(np.float32)
        gold = int(rng.integers(0, 6)) if i % 10 else None          # every 10th: gold not retrieved
        if gold is not None:
            x[gold, informative] += 2.5
        out.append(FusionExample(x, gold, f"d{i}"))
    return out


def test_fusion_learns_the_informative_feature_and_calibrates():
    from gen_linker.fusion import expected_calibration_error, fit

    rng = np.random.default_rng(0)
    model, report = fit(synthetic_examples(600, rng, informative=1), ["a", "b", "c"])
    test = synthetic_examples(300, np.random.default_rng(1), informative=1)
    conf, hit = [], []
    for e in test:
        s = model.scores(e.features)
        c = model.confidences(s)
        conf.append(float(c.max()))
        hit.append(e.gold is not None and int(np.argmax(s)) == e.gold)
    assert np.mean(hit) > 0.6 and report.held_out_top1 > 0.6
    assert expected_calibration_error(conf, hit) < 0.1
    missing = [float(model.confidences(model.scores(e.features)).max()) for e in test if e.gold is None]
    assert np.mean(missing) < np.mean([c for c, e in zip(conf, test) if e.gold is not None])


def test_fused_linker_is_fitted_on_dev_only_and_links(tiny_bert, tmp_path):
    from gen_linker import load_linker
    from gen_linker.linkers.fused import FusedLinker, train_fusion
    from gen_linker.spec import LinkerSpec

    dev = [Mention.from_dict(r) for r in TRAIN] * 3                 # enough lists to fit on
    dev = [Mention(f"{m.id}-{i}", m.text, m.mention, gold=m.gold) for i, m in enumerate(dev)]
    test_ids = {r["id"] for r in TEST}
    seen = []
    original = FusedLinker.features

    def spy(self, mentions):
        seen.extend(m.id for m in mentions)
        return original(self, mentions)

    spec = LinkerSpec.from_dict({"linker": "fused", "candidates": {"encoder": str(tiny_bert)},
                                 "rerank": {"candidates": 6}})
    FusedLinker.features = spy
    try:
        model, report = train_fusion(spec, KB, dev, tmp_path / "fusion", progress=False)
    finally:
        FusedLinker.features = original
    assert seen and not set(seen) & test_ids and set(report.mention_ids) <= {m.id for m in dev}
    linker = load_linker(KB, spec.merged({"rerank.fusion": str(tmp_path / "fusion")}))
    results = linker.link([Mention.from_dict(r) for r in TEST])
    assert all(r.entity_id in KB and 0.0 <= r.confidence <= 1.0 for r in results)
    nil = load_linker(KB, spec.merged({"rerank.fusion": str(tmp_path / "fusion"), "nil_threshold": 1.0}))
    assert all(r.entity_id is None for r in nil.link([Mention.from_dict(r) for r in TEST]))


def test_life_cues_tell_the_living_from_the_dead():
    """A caption's year against a life span: alive in it, or how long after the death."""
    from gen_linker.features import life_cues

    assert life_cues([2013], 1940, 1980) == (0.0, 33 / 50)        # "Lennon performing ... in 2013"
    assert life_cues([2009], 1954, None) == (1.0, 0.0)
    assert life_cues([1975, 2013], 1940, 1980) == (0.0, 0.0)      # a death after the earliest year
    assert life_cues([2100], 1900, 1950) == (0.0, 1.0)            # capped at 50 years
    assert life_cues([], 1940, 1980) == life_cues([2013], None, None) == (0.0, 0.0)


def test_a_fusion_fitted_before_features_were_added_reads_its_own_columns(tiny_bert, tmp_path):
    """A saved fusion whose feature list lacks some of this version's features still links,
    scoring exactly the columns it names; one naming a feature this version lacks is an error."""
    from gen_linker import load_linker
    from gen_linker.features import feature_names
    from gen_linker.fusion import FusionExample, FusionModel, fit
    from gen_linker.spec import LinkerSpec

    spec = LinkerSpec.from_dict({"linker": "fused", "candidates": {"encoder": str(tiny_bert)},
                                 "rerank": {"candidates": 6}})
    names = feature_names([])
    old = [n for n in names if n not in ("alive", "after_death")]
    keep = [names.index(n) for n in old]
    rng = np.random.default_rng(0)
    examples = [FusionExample(rng.normal(size=(6, len(old))).astype(np.float32), int(rng.integers(6)), f"d{i}")
                for i in range(40)]
    model, _ = fit(examples, old)
    model.save(tmp_path / "old")
    linker = load_linker(KB, spec.merged({"rerank.fusion": str(tmp_path / "old")}))
    mentions = [Mention.from_dict(r) for r in TEST]
    infos, feats = linker.features(mentions)
    assert all(x.shape[1] == len(old) for x in feats)
    full = linker.candidates(mentions)
    assert [[c.entity_id for c in cs] for cs in infos] == [[c.entity_id for c in cs] for cs in full]
    from gen_linker.features import candidate_features

    knn = linker.pool.knn(mentions) if linker.pool is not None else [None] * len(mentions)
    for m, cs, k, x in zip(mentions, infos, knn, feats):
        everything = candidate_features(m, cs, KB, linker.descriptions, linker.pool, k, [])
        assert np.array_equal(everything[:, keep], x)
    results = linker.link(mentions)
    for r, x in zip(results, feats):
        assert r.score == pytest.approx(float(model.scores(x).max()))
    bad = FusionModel(old + ["no_such_feature"])
    bad.save(tmp_path / "bad")
    with pytest.raises(GenLinkerError, match="no_such_feature"):
        load_linker(KB, spec.merged({"rerank.fusion": str(tmp_path / "bad")}))


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_artefact_is_an_error_naming_the_file(tiny_bert, retriever, tmp_path, damage):
    from gen_linker.fusion import FusionModel, fit
    from gen_linker.rerankers import CrossEncoderScorer, RerankerConfig, train_reranker

    train_reranker(KB, LABELLED, tmp_path / "ce", retriever,
                   RerankerConfig(kind="crossencoder", base=str(tiny_bert), epochs=0, max_length=32), progress=False)
    fit(synthetic_examples(50, np.random.default_rng(0)), ["a", "b", "c"])[0].save(tmp_path / "fusion")
    for path in (tmp_path / "ce" / "adapter_model.safetensors", tmp_path / "fusion" / "fusion.safetensors"):
        if damage == "missing":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GenLinkerError, match="adapter_model.safetensors"):
        CrossEncoderScorer(tmp_path / "ce", KB)
    with pytest.raises(GenLinkerError, match="fusion.safetensors" if damage == "missing" else "corrupt"):
        FusionModel.load(tmp_path / "fusion")
