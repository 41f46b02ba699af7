"""Refacing model files: the generator's weights with everything needed to use them.

A model file is a ``torch.save`` dict read back with ``weights_only=True``: the generator's
constructor arguments, its state (fp16), the face box (template mm, resolution), the training
window, the normalisation, the contrast it refaces and a summary of its training. A 1 mm model
trained elsewhere therefore drops in with no change to the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from ..resume import file_sha256
from .networks import Generator
from .space import WINSOR_PERCENTILE, FaceBox

FORMAT = "bidsreface-reface-1"
#: The packaged models by contrast and region (``--reface-region``).
PACKAGED = {("T1w", "face"): "reface_T1w.pt", ("T1w", "head"): "reface_T1w_head.pt"}


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded refacing model."""

    name: str
    contrast: str
    generator_args: dict
    state: dict
    box: FaceBox
    window: tuple[int, int, int]
    sha256: str
    path: str
    training: dict
    #: what the generator sees: ``defaced`` (the defaced head and its mask, the first
    #: models) or ``privacy`` (:mod:`bidsreface.reface.privacy`, with a latent code)
    conditioning: str = "defaced"
    #: the mean of the training heads on the box (network units), and the share of the
    #: generated head's departure from it that inference keeps (1: all of it)
    prior: torch.Tensor | None = None
    truncation: float = 1.0
    #: the training heads' main modes of variation about that mean, ``(K, *box.shape)``, each
    #: one standard deviation of the training people long: a seed draws its own prior from
    #: them (:func:`bidsreface.reface.infer.seeded_prior`), ``prior_scale`` standard
    #: deviations wide
    prior_modes: torch.Tensor | None = None
    prior_scale: float = 1.0

    @property
    def region(self) -> str:
        """The region the model fills: ``face``, or ``head`` (the whole non-brain head)."""
        return str(self.training.get("region", "face"))

    def generator(self, device: str | torch.device = "cpu") -> Generator:
        net = Generator(**self.generator_args)
        net.load_state_dict({k: v.float() for k, v in self.state.items()})
        return net.to(device)


def save_model(path: str | Path, generator: Generator, generator_args: dict, box: FaceBox,
               window: tuple[int, int, int], *, name: str, contrast: str = "T1w",
               conditioning: str = "defaced", training: dict | None = None,
               prior: torch.Tensor | None = None, truncation: float = 1.0,
               prior_modes: torch.Tensor | None = None, prior_scale: float = 1.0) -> str:
    """Write a model file (fp16 weights, prior and its modes); returns its sha256."""
    content = {
        "format": FORMAT,
        "name": name,
        "contrast": contrast,
        "conditioning": conditioning,
        "generator": dict(generator_args),
        "state_dict": {k: v.detach().to("cpu", torch.float16)
                       for k, v in generator.state_dict().items()},
        "box": box.to_dict(),
        "window": [int(v) for v in window],
        "normalisation": {"winsor_percentile": WINSOR_PERCENTILE, "range": [-1.0, 1.0],
                          "background": -1.0},
        "training": training or {},
    }
    if prior is not None:
        content["prior"] = torch.as_tensor(prior).detach().to("cpu", torch.float16)
        content["truncation"] = float(truncation)
        if prior_modes is not None:
            content["prior_modes"] = torch.as_tensor(prior_modes).detach().to("cpu",
                                                                             torch.float16)
            content["prior_scale"] = float(prior_scale)
    return _write(path, content)


def _write(path: str | Path, content: dict) -> str:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(content, tmp)
    tmp.replace(path)
    return file_sha256(path)


def replace_prior(path: str | Path, prior, prior_modes, prior_scale: float,
                  note: dict) -> str:
    """Rewrite a model file with another prior and modes, its weights untouched; ``note``
    joins its training summary (``training["prior_modes"]``). Returns the new sha256."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    content["prior"] = torch.as_tensor(prior).to("cpu", torch.float16)
    content["prior_modes"] = torch.as_tensor(prior_modes).to("cpu", torch.float16)
    content["prior_scale"] = float(prior_scale)
    content["training"] = {**content.get("training", {}), "prior_modes": note}
    return _write(path, content)


def load_model(path: str | Path) -> Model:
    """Read a model file; raise ``ValueError`` naming the file if it is not one."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(f"{path}: not a bidsreface model file ({first})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path}: not a bidsreface model file (format {FORMAT} expected)")
    return Model(name=content["name"], contrast=content["contrast"],
                 generator_args=content["generator"], state=content["state_dict"],
                 box=FaceBox.from_dict(content["box"]), window=tuple(content["window"]),
                 sha256=file_sha256(path), path=str(path), training=content["training"],
                 conditioning=content.get("conditioning", "defaced"),
                 prior=(content["prior"].float() if "prior" in content else None),
                 truncation=float(content.get("truncation", 1.0)),
                 prior_modes=(content["prior_modes"].float() if "prior_modes" in content
                              else None),
                 prior_scale=float(content.get("prior_scale", 1.0)))


def packaged_model_path(contrast: str, region: str = "face") -> Path | None:
    """The model installed with the package for ``contrast`` and ``region``, if there is
    one."""
    name = PACKAGED.get((contrast, region))
    if name is None:
        return None
    path = Path(str(resources.files("bidsreface") / "data" / "models" / name))
    return path if path.exists() else None


@lru_cache(maxsize=4)
def load_packaged_model(contrast: str, region: str = "face") -> Model | None:
    path = packaged_model_path(contrast, region)
    return None if path is None else load_model(path)
