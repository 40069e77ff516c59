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
    # 136 + 156 characters, of which 50 are in both sets: each character once
    assert s.images.shape == (242, 20, 28, 28) and s.images.dtype == np.uint8
    assert len({n.split("/", 1)[1] for n in s.names}) == 242 and s.names == tuple(sorted(s.names))
    assert sum(n.startswith("images_background_small1/") for n in s.names) == 136
    assert len({c.tobytes() for c in s.images}) == 242, "no two characters have the same drawings"
    ink = s.images.reshape(242 * 20, -1).mean(1)
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

    base = dict(items="omniglot", image_path=str(DATA), image_size=14, D=196, n_classes=100, n_holdout=20,
                exemplars=20, noise="none", n_labels=100, label_map="identity", L=8, B=2)  # fmt: skip
    return dg.validate(dg.TaskSpec(**{**base, **changes}))


@needs_data
def test_batches_gather_the_drawings_they_name_on_the_device(image_cache):
    import jax

    import data_gen as dg

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


# ------------------------------------------------------------------ exemplar splits between training and probes


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    """One decoded-image cache for this module's universes, outside the user's cache directory."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


def drawing_matches(images: np.ndarray, b) -> np.ndarray:
    """(B, L+1, E): whether each item is drawing e of its class, pixel for pixel."""
    return np.all(images[b.classes] == b.items[..., None, :], axis=-1)


def sample_draw(st, uni, p, name: str | None, n: int = 64, seed: int = 0):
    """n training sequences (name None) or n sequences of probe ``name``, as numpy arrays."""
    import jax
    from _data_gen_util import numpy, sampler

    import data_gen as dg
    from data_gen.probes import probe_task

    draw, st_, p_ = probe_task(name, st, p) if name else (dg.TRAIN, st, p)
    return numpy(sampler(st_, n, draw)(uni, p_, jax.random.key(seed)))


TRAINING_CLASS_PROBES = ("in_dist", "icl_flip", "iwl_no_support", "ciwl", "shots_2")


@needs_data
def test_probes_on_training_characters_show_only_the_drawings_training_never_shows(image_cache):
    import data_gen as dg

    spec = image_task(probe_exemplars=5)
    st, p = dg.static_part(spec), dg.dynamic_part(spec)
    uni = dg.make_universe(st)
    images = np.asarray(uni.images)
    seen = drawing_matches(images, sample_draw(st, uni, p, None))
    assert seen[..., :15].any(-1).all() and not seen[..., 15:].any(), "training shows drawings 0..14 only"
    for name in TRAINING_CLASS_PROBES:
        b = sample_draw(st, uni, p, name)
        assert (b.classes < 80).all(), name
        m = drawing_matches(images, b)
        assert m[..., 15:].any(-1).all(), f"{name}: every item is one of the 5 reserved drawings of its class"
        assert not m[..., :15].any(), f"{name}: a probe shows a drawing that training shows"
    novel = drawing_matches(images, sample_draw(st, uni, p, "icl_novel"))
    assert novel.any(-1).all() and novel[..., :15].any() and novel[..., 15:].any(), "holdout: all 20 drawings"
    # the pure-IWL reference knows a class by what training shows of it
    np.testing.assert_allclose(np.asarray(uni.prototypes), images[:, :15].mean(1), rtol=1e-6)


def test_gaussian_exemplars_split_the_same_way():
    from _data_gen_util import universe

    import data_gen as dg

    spec = dg.validate(dg.TaskSpec(D=8, n_labels=16, n_classes=48, n_holdout=16, exemplars=4, probe_exemplars=1,
                                   noise="additive", noise_scale=0.5))  # fmt: skip
    st, p = dg.static_part(spec), dg.dynamic_part(spec)
    uni = universe(st)
    candidates = np.asarray(uni.prototypes)[:, None] + 0.5 * np.asarray(uni.exemplar_noise)  # (classes, E, D)

    def exemplar(b) -> np.ndarray:  # index of the exemplar each item is, checked to be one
        d = np.linalg.norm(candidates[b.classes] - b.items[..., None, :], axis=-1)  # (B, L+1, E)
        assert np.all(d.min(-1) < 1e-5)
        return d.argmin(-1)

    assert set(np.unique(exemplar(sample_draw(st, uni, p, None, n=256)))) == {0, 1, 2}
    for name in TRAINING_CLASS_PROBES:
        assert set(np.unique(exemplar(sample_draw(st, uni, p, name, n=256)))) == {3}, name
    assert set(np.unique(exemplar(sample_draw(st, uni, p, "icl_novel", n=256)))) == {0, 1, 2, 3}


# ------------------------------------------------------------------------- augmentation: transforms as classes


def test_transforms_are_quarter_turns_and_mirror_images():
    from data_gen.omniglot import transformed

    x = np.arange(2 * 9).reshape(1, 2, 3, 3)  # one character, two drawings, no symmetry
    both = transformed(x, "both")
    assert both.shape == (1, 8, 2, 3, 3)
    for t in range(8):
        base = x[0][..., ::-1] if t >= 4 else x[0]  # mirrored left-right, then turned
        np.testing.assert_array_equal(both[0, t], np.rot90(base, t % 4, axes=(1, 2)))
    assert len({both[0, t].tobytes() for t in range(8)}) == 8
    np.testing.assert_array_equal(transformed(x, "rotations")[0], both[0, :4])
    np.testing.assert_array_equal(transformed(x, "flips")[0], both[0, ::4])
    np.testing.assert_array_equal(transformed(x, "none")[0, 0], x[0])


@needs_data
def test_augmented_classes_are_the_transforms_of_whole_characters(image_cache):
    import data_gen as dg

    spec = image_task(augment="both", n_classes=96, n_holdout=16, n_labels=80)  # 12 characters, 2 held out
    uni = dg.make_universe(dg.static_part(spec))
    images = np.rint(np.asarray(uni.images) * 255).astype(np.uint8).reshape(96, 20, 14, 14)
    chars = load_omniglot(DATA, 14)
    source = []  # the character of the data each class's untransformed drawings are
    for k in range(12):
        base = images[8 * k]
        (c,) = [c for c in range(chars.n_classes) if np.array_equal(chars.images[c], base)]
        source.append(c)
        for t in range(8):
            expected = np.rot90(base[..., ::-1] if t >= 4 else base, t % 4, axes=(1, 2))
            np.testing.assert_array_equal(images[8 * k + t], expected)
    assert len(set(source)) == 12
    # no drawing of a holdout class (any transform) is a drawing of a training class
    train = {d.tobytes() for d in images[:80].reshape(-1, 14, 14)}
    assert not train & {d.tobytes() for d in images[80:].reshape(-1, 14, 14)}
    assert set(source[:10]).isdisjoint(source[10:])
    with pytest.raises(ConfigError) as e:  # more classes than characters x transforms
        dg.make_universe(dg.static_part(image_task(augment="flips", n_classes=500, n_holdout=20, n_labels=480)))
    assert e.value.field == "task.n_classes" and "x 2 transforms = 484 classes" in e.value.rule


def test_exemplar_splits_and_augmentation_are_checked():
    import data_gen as dg

    bad = [(dict(probe_exemplars=-1), "task.probe_exemplars", "must be >= 0"),
           (dict(probe_exemplars=20), "task.probe_exemplars", "must be below exemplars (20)"),
           (dict(augment="both", n_holdout=24), "task.n_holdout", "must be a multiple of 8"),
           (dict(augment="rotations", n_holdout=22), "task.n_holdout", "must be a multiple of 4"),
           (dict(augment="mirror"), "task.augment", "must be one of none, rotations, flips, both"),
           (dict(image_path=None), "task.image_path", "pass task.image_path=")]  # fmt: skip
    for change, field, rule in bad:
        with pytest.raises(ConfigError) as e:
            dg.validate(dataclasses.replace(image_task(), **change))
        assert e.value.field == field and rule in e.value.rule, (change, str(e.value))
    gaussian = [(dict(augment="flips"), "task.augment", "need image items"),
                (dict(exemplars=0, probe_exemplars=1), "task.probe_exemplars", "exemplars >= 2")]  # fmt: skip
    for change, field, rule in gaussian:
        with pytest.raises(ConfigError) as e:
            dg.validate(dg.TaskSpec(**change))
        assert e.value.field == field and rule in e.value.rule, (change, str(e.value))
    dg.validate(dataclasses.replace(image_task(), probe_exemplars=19, augment="both"))  # 80 training classes


@needs_data
@pytest.mark.slow
def test_the_cpu_preset_trains_on_the_images(tmp_path, image_cache):
    from test_presets import composed

    from iclwl.config import from_dict, members
    from iclwl.run import run

    data = composed("chan2022_omniglot_cpu", f"task.image_path={DATA}", "train.steps=5", "train.chunk_steps=5",
                    "probes.n_eval=16", "probes.n_log=1", "checkpoint.enabled=false", "logging.plot=false",
                    "logging.progress=false", given=False)  # fmt: skip
    cfg = from_dict(data)
    table = run(cfg, tmp_path)
    assert len(table) == 5 * len(members(cfg)) == 10  # a row per member and probe
