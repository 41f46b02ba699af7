"""Training pairs: full heads defaced by the project's own defacer, carried into the face box.

Each pair holds, on the box grid and scaled to [-1, 1]: the original head (the target), the
defaced head and the face mask (the generator's input), and the part of the box inside the
image's field of view (where the loss is counted).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..deface.mask import face_mask
from ..deface.pipeline import register_file
from ..deface.template import load_template
from ..image import background_value, load_image
from .space import FaceBox, intensity_scaling, sample_into_box

LOGGER = logging.getLogger(__name__)


@dataclass
class Pair:
    """One training head on the box grid."""

    name: str
    original: np.ndarray
    defaced: np.ndarray
    mask: np.ndarray
    fov: np.ndarray

    def save(self, path: Path) -> None:
        np.savez_compressed(path, name=self.name, original=self.original,
                            defaced=self.defaced, mask=self.mask, fov=self.fov)

    @classmethod
    def load(cls, path: Path) -> Pair:
        with np.load(path) as f:
            return cls(name=str(f["name"]), original=f["original"], defaced=f["defaced"],
                       mask=f["mask"], fov=f["fov"])


def box_inputs(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, mask: np.ndarray,
               box: FaceBox):
    """The generator's view of a defaced image: (defaced, mask, fov, scaling) on the box.

    ``data`` must already be defaced; the same function serves training and inference, so
    the network sees at inference exactly what it was trained on.
    """
    background = float(background_value(data))
    scaling = intensity_scaling(data, background)
    defaced = scaling.forward(sample_into_box(data, affine, matrix, box, cval=background))
    mask_box = sample_into_box(mask.astype(np.float32), affine, matrix, box)
    fov = sample_into_box(np.ones(data.shape, np.float32), affine, matrix, box)
    return defaced, np.clip(mask_box, 0, 1), np.clip(fov, 0, 1), scaling


def make_pair(path: str | Path, box: FaceBox, *, seed: int = 0, brain_margin_mm: float = 5.0,
              ) -> Pair:
    """Register and deface one full head with the project's defacer; carry it into the box."""
    img = load_image(path)
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    reg, distance = register_file(str(path), seed=seed)
    mask, _ = face_mask(data.shape, img.affine, reg.matrix, load_template(),
                        brain_margin_mm=brain_margin_mm, brain_distance=distance)
    background = float(background_value(data))
    defaced_native = np.where(mask, background, data)
    defaced, mask_box, fov, scaling = box_inputs(defaced_native, img.affine, reg.matrix, mask,
                                                 box)
    original = scaling.forward(sample_into_box(data, img.affine, reg.matrix, box,
                                               cval=background))
    return Pair(name=Path(path).name, original=original, defaced=defaced, mask=mask_box,
                fov=fov)


def cached_pairs(paths: list[Path], box: FaceBox, cache_dir: Path, *, seed: int = 0,
                 ) -> list[Pair]:
    """Pairs for ``paths``, made once and kept in ``cache_dir`` (keyed by file and box)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for path in paths:
        key = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        box_key = hashlib.sha256(repr(box).encode()).hexdigest()[:8]
        cached = cache_dir / f"{key}_{box_key}_s{seed}.npz"
        if not cached.exists():
            LOGGER.info("defacing and carrying %s into the face box", path)
            pair = make_pair(path, box, seed=seed)
            tmp = cached.with_suffix(".tmp.npz")
            pair.save(tmp)
            tmp.rename(cached)
        pairs.append(Pair.load(cached))
    return pairs


def morph_field(fixed: np.ndarray, moving: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Displacement (box voxels, shape (3, *box)) with ``fixed(x) ~ moving(x + u(x))``.

    A SyN between two heads on the box grid; morphs between heads follow a fraction of it.
    """
    import ants

    from ..deface.register import _seed_ants

    _seed_ants(seed)
    f = ants.from_numpy(np.ascontiguousarray(fixed, np.float32))
    m = ants.from_numpy(np.ascontiguousarray(moving, np.float32))
    out = ants.registration(fixed=f, moving=m, type_of_transform="SyNOnly",
                            initial_transform="identity", syn_metric="CC", syn_sampling=2,
                            reg_iterations=(40, 20, 0), verbose=False)
    warp = ants.image_read(out["fwdtransforms"][0]).numpy()  # (*shape, 3), unit spacing
    for name in out["fwdtransforms"] + out["invtransforms"]:
        Path(name).unlink(missing_ok=True)
    return np.moveaxis(warp, -1, 0).astype(np.float32)
