"""Faces partly left by a weak defacing: a learned score on the check's own renders.

dlib's face detector (:mod:`bidsreface.check.images`) finds whole faces. A defacing whose mask
was placed badly leaves part of a face (the nose tip, the mouth and chin, an eye): no whole
face to detect, yet a curator must be told. The renders the check has already made of an image
(the views of :data:`bidsreface.check.images.VIEWS`) are reduced to small feature maps
(:func:`view_features`) and scored by a logistic model trained on real heads
(``scripts/build_remnant_model.py``; its card is ``data/models/REMNANT_CARD.md``): originals,
heads properly defaced by bidsreface, and copies defaced by the template's face mask placed
by weak registrations, labelled by the share of the face they leave.

The model (``data/models/remnant.npz``) holds the feature means and scales, the weights, the
bias and the threshold chosen on the training people so that properly defaced heads are not
flagged. Nothing is registered; the score costs a few milliseconds per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

#: The packaged model.
MODEL_FILE = Path(__file__).resolve().parents[1] / "data" / "models" / "remnant.npz"
#: Side (pixels) of a view's feature maps.
FEATURE_SIDE = 4
#: Side (pixels) the renders are first reduced to (what the build script keeps).
SMALL_SIDE = 64


def reduce(render: np.ndarray, side: int = SMALL_SIDE) -> np.ndarray:
    """Block means of a square render, *side* x *side* (float32).

    >>> reduce(np.arange(16.0).reshape(4, 4), 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    render = np.asarray(render, dtype=np.float32)
    n = render.shape[0]
    if render.shape != (n, n) or n % side:
        raise ValueError(f"expected a square render whose side is a multiple of {side}, "
                         f"got shape {render.shape}")
    k = n // side
    return render.reshape(side, k, side, k).mean(axis=(1, 3))


def view_features(small: np.ndarray | None, side: int = FEATURE_SIDE) -> np.ndarray:
    """Feature maps of one view from its reduced render (:func:`reduce`), flattened:

    - the grey levels (shading: the surface's slope towards the light; 0 off the head);
    - the head's silhouette (1 where the head is);
    - the gradient magnitude of the grey levels (edges: nose, lips, eye sockets);

    each as block means on a *side* x *side* grid. A view that could not be rendered (None)
    gives zeros.

    >>> view_features(None, 4).shape
    (48,)
    >>> f = view_features(np.ones((64, 64), np.float32), 4)
    >>> float(f[:16].mean()), float(f[16:32].mean()), float(f[32:].max())
    (1.0, 1.0, 0.0)
    """
    if small is None:
        return np.zeros(3 * side * side, dtype=np.float32)
    small = np.asarray(small, dtype=np.float32)
    drow, dcol = np.gradient(small)
    maps = (small, (small > 0).astype(np.float32), np.hypot(drow, dcol))
    return np.concatenate([reduce(m, side).ravel() for m in maps])


def image_features(smalls: list[np.ndarray | None], side: int = FEATURE_SIDE) -> np.ndarray:
    """The features of an image: :func:`view_features` of each view, in the views' order."""
    return np.concatenate([view_features(s, side) for s in smalls])


@dataclass(frozen=True)
class RemnantModel:
    """A logistic model on standardised features; ``views`` names the views in order."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    views: tuple[str, ...]
    side: int = FEATURE_SIDE

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """The logit's share from each view (the bias left out)."""
        terms = (features - self.mean) / self.scale * self.weights
        return terms.reshape(len(self.views), -1).sum(axis=1)

    def score(self, features: np.ndarray) -> tuple[float, str]:
        """The probability that a face is partly left, and the view that says so most."""
        parts = self.contributions(features)
        logit = float(parts.sum() + self.bias)
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))), \
            self.views[int(np.argmax(parts))]

    def save(self, path: str | Path, **info) -> Path:
        """Write the model as ``.npz`` (with *info*: strings, numbers)."""
        path = Path(path)
        np.savez_compressed(path, mean=self.mean.astype(np.float32),
                            scale=self.scale.astype(np.float32),
                            weights=self.weights.astype(np.float32), bias=self.bias,
                            threshold=self.threshold, views=np.array(self.views),
                            side=self.side, **{f"info_{k}": v for k, v in info.items()})
        return path


def load_model(path: str | Path = MODEL_FILE) -> RemnantModel:
    """Read a model written by :meth:`RemnantModel.save`."""
    with np.load(path, allow_pickle=False) as npz:
        return RemnantModel(mean=npz["mean"].astype(np.float32),
                            scale=npz["scale"].astype(np.float32),
                            weights=npz["weights"].astype(np.float32),
                            bias=float(npz["bias"]), threshold=float(npz["threshold"]),
                            views=tuple(str(v) for v in npz["views"]), side=int(npz["side"]))


@lru_cache(maxsize=1)
def packaged_model() -> RemnantModel:
    """The packaged model (read once per process)."""
    return load_model(MODEL_FILE)


def remnant_score(smalls: list[np.ndarray | None], model: RemnantModel | None = None
                  ) -> tuple[float, str]:
    """Score of the reduced renders of an image's views (:func:`reduce`, in the order of
    :data:`bidsreface.check.images.VIEWS`): the probability that part of a face is left,
    and the view that says so most."""
    model = model or packaged_model()
    if len(smalls) != len(model.views):
        raise ValueError(f"expected {len(model.views)} views, got {len(smalls)}")
    return model.score(image_features(smalls, model.side))
