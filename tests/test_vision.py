"""Vision encoder (a small random frozen CLIP), image references, the feature cache, the mapper."""
import base64
import io

import numpy as np
import pytest
import torch

from gen_linker.errors import ImageError
from gen_linker.mapper import LinearMapper, splice_prefix
from gen_linker.vision import VisionEncoder, decode_image, image_bytes


def png(color, size=(48, 40), square=None) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    if square:
        ImageDraw.Draw(im).rectangle(square, fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoder():
    return VisionEncoder.from_config(seed=0, batch_size=2)


@pytest.fixture
def images(tmp_path):
    files = {"red.png": png((200, 20, 20)), "blue.png": png((20, 20, 200)),
             "red_square.png": png((200, 20, 20), square=(5, 5, 25, 25))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, files


def test_features_differ_by_content_and_batching_does_not_matter(encoder, images):
    root, files = images
    ims = [decode_image(d) for d in files.values()]
    batched = encoder.encode(ims)                       # batches of 2: 2 + 1
    alone = np.concatenate([encoder.encode([im]) for im in ims])
    assert batched.shape == (3, encoder.feature_dim)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3   # colour changes the feature
    assert np.abs(batched[0] - batched[2]).max() > 1e-3   # so does a shape


def test_path_and_base64_references_give_the_same_feature(encoder, images):
    root, files = images
    b64 = base64.b64encode(files["blue.png"] + b"\0" * 600).decode()   # longer than a file name may be
    feats, errors = encoder.encode_refs(["blue.png", b64, "data:image/png;base64," + b64], root=root)
    assert errors == [None, None, None]
    np.testing.assert_allclose(feats[0], feats[1])
    np.testing.assert_allclose(feats[0], feats[2])


def test_cache_means_a_second_run_encodes_nothing(images, tmp_path):
    root, files = images
    enc = VisionEncoder.from_config(seed=0)
    refs = list(files)
    first, _ = enc.encode_refs(refs, root=root, cache_dir=tmp_path / "cache")
    assert enc.n_encoded == 3
    again = VisionEncoder.from_config(seed=0)           # a new process would start like this
    second, _ = again.encode_refs(refs, root=root, cache_dir=tmp_path / "cache")
    assert again.n_encoded == 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = VisionEncoder.from_config(seed=1)           # other weights: another cache
    other.encode_refs(refs[:1], root=root, cache_dir=tmp_path / "cache")
    assert other.n_encoded == 1


def test_bad_images_are_reported_per_reference_and_the_rest_encoded(encoder, images):
    root, files = images
    (root / "broken.png").write_bytes(files["red.png"][:30])
    refs = ["red.png", "missing.png", "broken.png", "data:image/png;base64,%%%notbase64", "blue.png"]
    feats, errors = encoder.encode_refs(refs, root=root)
    assert [f is not None for f in feats] == [True, False, False, False, True]
    assert "missing.png" in str(errors[1]) and "broken.png" in str(errors[2])
    assert "base64" in str(errors[3])
    with pytest.raises(ImageError, match="empty"):
        image_bytes("", root)


def test_mapper_shapes_placement_and_round_trip(tmp_path):
    torch.manual_seed(0)
    mapper = LinearMapper(feature_dim=16, hidden_size=8, n_prefix=4)
    feats = torch.randn(3, 16)
    out = mapper(feats)
    assert out.shape == (3, 4, 8)
    text = torch.randn(10, 8)
    spliced = splice_prefix(text, out[0], at=2)
    assert spliced.shape == (14, 8)
    assert torch.equal(spliced[:2], text[:2]) and torch.equal(spliced[2:6], out[0]) and torch.equal(spliced[6:], text[2:])
    loaded = LinearMapper.load(mapper.save(tmp_path / "m"))
    assert loaded.config() == mapper.config()
    assert torch.equal(loaded(feats), out)
    with pytest.raises(Exception, match="not a saved mapper"):
        LinearMapper.load(tmp_path / "nothing")
