"""Omniglot handwritten characters as class exemplars: read once from the official layout, cached as one array.

The official release ships zips (``images_background.zip``, ``images_evaluation.zip``, or the small background
sets) whose members are ``images_<set>/<alphabet>/<character>/<id>_<drawer>.png``: 105 x 105 one-bit images,
20 drawers per character. ``load_omniglot`` accepts a directory holding such zips, or the unpacked tree, or one
zip. Every character becomes a class; its drawings, in drawer order, its exemplars. Classes are ordered by
(set, alphabet, character), so class i is the same character on every machine. A character is named by its
alphabet and number: the small background sets overlap (``images_background_small1`` and ``_small2`` share 50
characters, the same drawings), so a character found in several sets is kept once, from the first set; otherwise
a holdout character could be a training character under another set's name.

Decoding 30k PNGs takes a while, so the result is cached as an ``.npz`` keyed by the source files and the image
size: beside the data when that directory is writable, else under ``$XDG_CACHE_HOME/iclwl`` (``~/.cache/iclwl``).
Strokes are bright (255) on a dark background (0), so a downsampled stroke keeps its mass as grey levels.

``transformed`` turns every character into several classes (rotations and mirror images, Chan et al. 2022); the
universe applies it once, with numpy, when it builds the image array.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_gen.errors import ConfigError
from data_gen.spec import Augment, transforms

CACHE_VERSION = 2  # bump when the decoding changes, so old caches are not reused
PNG = re.compile(r"(?:^|/)(images_[^/]+)/([^/]+)/([^/]+)/([^/]+\.png)$")  # set, alphabet, character, file


@dataclass(frozen=True)
class ImageSet:
    """Characters x drawings: ``images[c, e]`` is drawing e of character c."""

    images: np.ndarray  # (C, E, size, size) uint8, strokes high
    names: tuple[str, ...]  # "<set>/<alphabet>/<character>" of each class

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]


def load_omniglot(path: str | Path, size: int = 28, cache_dir: str | Path | None = None,
                  field: str = "task.image_path") -> ImageSet:  # fmt: skip
    """The characters under ``path`` at ``size`` x ``size`` pixels (``field`` names the setting in errors)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(field, str(path), "does not exist (give a directory with Omniglot's images_*.zip files "
                          "or its unpacked images_*/<alphabet>/<character>/*.png tree)")  # fmt: skip
    if not 8 <= size <= 105:
        raise ConfigError("task.image_size", size, "must be in [8, 105] pixels (Omniglot images are 105 x 105)")
    sources = _sources(path)
    if not sources:
        raise ConfigError(field, str(path), "holds no Omniglot images (expected images_*.zip files or an "
                          "images_*/<alphabet>/<character>/*.png tree)")  # fmt: skip
    cache = _cache_file(path, sources, size, cache_dir)
    if cache.exists():
        with np.load(cache) as f:
            return ImageSet(f["images"], tuple(str(n) for n in f["names"]))
    images = _decode(path, size, field)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=images.images, names=np.array(images.names))
    os.replace(tmp, cache)  # a reader never sees half a cache
    return images


def transformed(images: np.ndarray, augment: Augment) -> np.ndarray:
    """(C, E, S, S) drawings -> (C, T, E, S, S): every drawing under each of the T transforms of ``augment``
    (``spec.transforms``: mirrored left-right first when asked, then turned by quarter turns anticlockwise)."""
    out = [np.rot90(np.flip(images, -1) if mirror else images, turns, axes=(-2, -1))
           for mirror, turns in transforms(augment)]  # fmt: skip
    return np.stack(out, axis=1)


def _sources(path: Path) -> list[Path]:
    """The zips, or the PNG files of the unpacked tree, that make up the set."""
    if path.is_file():
        return [path] if path.suffix == ".zip" else []
    zips = sorted(path.glob("images_*.zip"))
    return zips or sorted(p for p in path.rglob("*.png") if PNG.search(p.as_posix()))


def _files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative name, PNG bytes) of every image under ``path``."""
    for source in _sources(path):
        if source.suffix == ".zip":
            with zipfile.ZipFile(source) as z:
                for name in z.namelist():
                    if PNG.search(name):
                        yield name, z.read(name)
        else:
            yield source.relative_to(path).as_posix(), source.read_bytes()


def _decode(path: Path, size: int, field: str) -> ImageSet:
    drawings: dict[tuple[str, str, str], dict[str, np.ndarray]] = defaultdict(dict)
    for name, data in _files(path):
        set_name, alphabet, character, file = PNG.search(name).groups()
        with Image.open(io.BytesIO(data)) as im:
            ink = Image.fromarray(255 - np.asarray(im.convert("L")))  # strokes bright
            drawings[(set_name, alphabet, character)][file] = np.asarray(ink.resize((size, size), Image.BOX))
    counts = {len(d) for d in drawings.values()}
    if len(counts) != 1:
        raise ConfigError(field, str(path), f"characters have different numbers of drawings ({sorted(counts)}); "
                          "every character needs the same number (Omniglot has 20)")  # fmt: skip
    first: dict[tuple[str, str], tuple[str, str, str]] = {}
    for k in sorted(drawings):  # one copy of a character that several sets hold
        first.setdefault(k[1:], k)
    keys = sorted(first.values())
    images = np.stack([np.stack([drawings[k][f] for f in sorted(drawings[k])]) for k in keys])
    return ImageSet(images.astype(np.uint8), tuple("/".join(k) for k in keys))


def _cache_file(path: Path, sources: list[Path], size: int, cache_dir: str | Path | None) -> Path:
    key = hashlib.sha256(f"v{CACHE_VERSION} {size}".encode())
    for s in sources:
        key.update(f"{s.relative_to(path) if s != path else s.name} {s.stat().st_size}\n".encode())
    name = f"omniglot_{size}px_{key.hexdigest()[:16]}.npz"
    if cache_dir is not None:
        return Path(cache_dir) / name
    here = path if path.is_dir() else path.parent
    if os.access(here, os.W_OK):
        return here / ".iclwl_cache" / name
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iclwl" / name
