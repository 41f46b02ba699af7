"""The packaged head template and its masks (built by ``scripts/build_template.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import nibabel as nb
import numpy as np
from scipy import ndimage

PREFIX = "tpl-bidsreface_res-15"


@dataclass(frozen=True, eq=False)
class Template:
    """Head template: T1w intensities and masks on one grid (RAS, millimetres)."""

    t1w: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    face: np.ndarray
    ears: np.ndarray
    affine: np.ndarray
    description: dict

    @property
    def spacing(self) -> float:
        return float(abs(self.affine[0, 0]))

    def brain_distance_mm(self) -> np.ndarray:
        """Distance (mm) from each voxel to the template brain (0 inside)."""
        return _brain_distance(self)


@lru_cache(maxsize=1)
def _brain_distance(template: Template) -> np.ndarray:
    return ndimage.distance_transform_edt(~template.brain, sampling=template.spacing).astype(
        np.float32
    )


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the packaged template once per process."""
    root = resources.files("bidsreface") / "data" / "template"

    def read(name: str) -> nb.Nifti1Image:
        with resources.as_file(root / f"{PREFIX}_{name}.nii.gz") as path:
            img = nb.load(path)
            img.get_fdata()
            return img

    t1w = read("T1w")
    masks = {k: np.asarray(read(f"desc-{k}_mask").dataobj) > 0 for k in
             ("head", "brain", "face", "ears")}
    description = json.loads((root / "template_description.json").read_text())
    return Template(t1w=t1w.get_fdata(dtype=np.float32), affine=t1w.affine,
                    description=description, **masks)
