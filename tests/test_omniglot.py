"""The Omniglot loader: the official layout (zips or unpacked tree), its cache, and clear errors.

Reads the small background sets from ../shared/data/omniglot (or $ICLWL_OMNIGLOT) when present; skips otherwise.
"""

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import data_gen.omniglot as omniglot
from data_gen import ConfigError
from data_gen.omniglot import load_omniglot

DATA = Path(os.environ.get("ICLWL_OMNIGLOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
needs_data = pytest.mark.skipif(not list(DATA.glob("images_*.zip")), reason=f"no Omniglot zips at {DATA}")


@needs_data
def test_small_background_sets_load_as_characters_by_drawings(tmp_path):
    s = load_omniglot(DATA, 28, cache_dir=tmp_path)
    assert s.images.shape == (292, 20, 28, 28) and s.images.dtype == np.uint8
    assert len(set(s.names)) == 292 and s.names == tuple(sorted(s.names))
    assert sum(n.startswith("images_background_small1/") for n in s.names) == 136
    ink = s.images.reshape(292 * 20, -1).mean(1)
    assert (ink > 0).all() and ink.mean() < 60, "strokes are bright on a dark background, every drawing has ink"
    # drawings of one character are more alike than drawings of different characters
    flat = s.images[:20].reshape(20, 20, -1).astype(np.float32)
    within = np.mean([np.linalg.norm(flat[c, 0] - flat[c, 1]) for c in range(20)])
    across = np.mean([np.linalg.norm(flat[c, 0] - flat[c + 1, 0]) for c in range(19)])
    assert within < across


@needs_data
def test_the_cache_is_reused_and_falls_back_when_the_data_is_read_only(tmp_path, monkeypatch):
    first = load_omniglot(DATA, 20, cache_dir=tmp_path)
    monkeypatch.setattr(omniglot, "_decode", lambda *a: pytest.fail("decoded again instead of reading the cache"))
    again = load_omniglot(DATA, 20, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.names == again.names
    monkeypatch.undo()
    if not os.access(DATA, os.W_OK):  # a read-only copy: the cache goes to the user's cache directory
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        load_omniglot(DATA, 20)
        assert list((tmp_path / "xdg" / "iclwl").glob("omniglot_20px_*.npz"))


@needs_data
def test_an_unpacked_tree_gives_the_same_images_as_the_zip(tmp_path):
    zip_path = sorted(DATA.glob("images_*.zip"))[0]
    with zipfile.ZipFile(zip_path) as z:
        members = [n for n in z.namelist() if "/character01/" in n or "/character02/" in n]
        z.extractall(tmp_path / "tree", members=members)
    tree = load_omniglot(tmp_path / "tree", 28, cache_dir=tmp_path / "c1")
    whole = load_omniglot(zip_path, 28, cache_dir=tmp_path / "c2")
    assert tree.n_classes == len({n.rsplit("/", 1)[0] for n in members if n.endswith(".png")})
    for name, img in zip(tree.names, tree.images, strict=True):
        np.testing.assert_array_equal(img, whole.images[whole.names.index(name)])


def test_a_missing_or_empty_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_omniglot(tmp_path / "nowhere")
    assert e.value.field == "task.image_path" and "does not exist" in e.value.rule
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as e:
        load_omniglot(tmp_path / "empty")
    assert "holds no Omniglot images" in e.value.rule
    with pytest.raises(ConfigError) as e:
        load_omniglot(tmp_path / "empty", size=200)
    assert e.value.field == "task.image_size"


def test_characters_with_unequal_drawings_are_refused(tmp_path):
    from PIL import Image

    for character, n in (("character01", 2), ("character02", 3)):
        d = tmp_path / "images_background" / "Alpha" / character
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((105, 105), 255, np.uint8)).convert("1").save(d / f"0001_{i:02d}.png")
    with pytest.raises(ConfigError) as e:
        load_omniglot(tmp_path, 28, cache_dir=tmp_path / "cache")
    assert "different numbers of drawings" in e.value.rule


# ------------------------------------------------------------------------------------- image items in data_gen


def image_task(**changes):
    import data_gen as dg

    spec = dg.TaskSpec(items="omniglot", image_path=str(DATA), image_size=14, D=196, n_classes=100, n_holdout=20,
                       exemplars=20, noise="none", n_labels=100, label_map="identity", L=8, B=2, **changes)  # fmt: skip
    return dg.validate(spec)


@needs_data
def test_batches_gather_the_drawings_they_name_on_the_device(tmp_path, monkeypatch):
    import jax

    import data_gen as dg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    st = dg.static_part(image_task())
    uni = dg.make_universe(st)
    assert uni.images.shape == (100, 20, 196) and float(uni.images.max()) <= 1.0
    chars = load_omniglot(DATA, 14)
    # class c is one whole character of the data: its 20 drawings, in order
    pixels = chars.images.reshape(chars.n_classes, 20, -1).astype(np.float32) / np.float32(255)
    for c in (0, 57, 99):
        assert sum(np.array_equal(p, np.asarray(uni.images[c])) for p in pixels) == 1
    sample = jax.jit(lambda k: dg.sample_batch(st, uni, dg.dynamic_part(image_task()), k, 64))
    b = jax.device_get(sample(jax.random.key(3)))
    imgs = np.asarray(uni.images)
    for s in range(64):
        for i in range(st.L + 1):
            c = b.classes[s, i]
            assert 0 <= c < 80, "training sequences never show a holdout character"
            assert np.any(np.all(imgs[c] == b.items[s, i], axis=-1)), "an item is one drawing of its class"
    novel = jax.device_get(dg.probe_batch("icl_novel", st, uni, dg.dynamic_part(image_task()), jax.random.key(4), 64))
    assert (novel.classes >= 80).all(), "the ICL probe draws holdout characters only"


def test_image_items_are_checked():
    import data_gen as dg

    bad = [(dict(image_path=None), "task.image_path"), (dict(D=63), "task.D"), (dict(exemplars=0), "task.exemplars"),
           (dict(noise="reddy"), "task.noise"), (dict(p_novel=0.1), "task.p_novel")]  # fmt: skip
    for change, field in bad:
        spec = dataclasses.replace(image_task(), **change)
        with pytest.raises(ConfigError) as e:
            dg.validate(spec)
        assert e.value.field == field, change
