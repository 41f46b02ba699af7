"""What a reader sees in bidsreface's outputs, for every way a NIfTI file can store a head.

Usage::

    BIDSREFACE_BRAINSMALL=.../brainsmall.den python benchmarks/header_forms.py [--ixi DIR]

VolPack's real brainsmall head is written in each storage form of ``tests/nifti_forms.py``
(uint8 to float64, with and without ``scl_slope``/``scl_inter``, slope 0 and NaN, both byte
orders, ``.nii`` and ``.nii.gz``, NIfTI-1 and NIfTI-2, qform-only, sform-only, differing codes,
4D with one volume, a large ``vox_offset`` with AFNI, comment and DICOM extensions and filled
free-text fields). Each is defaced in its front 30 slices by bidsreface's writers (the mask is
fixed: the forms, not the registration, are measured) and its face mask is written.
``--ixi DIR`` adds the first IXI head of DIR (uint8 stored with a slope and an AFNI
extension). Printed per form: voxels that read back differently outside the mask (nibabel,
scaled), extensions left in the output, identifying strings of the input found in it, and
whether the mask's qform/sform codes differ from the input's. Files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import nifti_forms as nf  # noqa: E402

from bidsreface.deface.apply import deface  # noqa: E402
from bidsreface.demo import load_brainsmall  # noqa: E402
from bidsreface.image import save_like, save_mask, stored_values  # noqa: E402


def measure(raw: Path, mask: np.ndarray, folder: Path) -> str:
    """One row: what the written outputs of *raw* show a reader."""
    name = raw.name.split(".")[0]
    try:
        out = save_like(deface(stored_values(raw), mask), raw, folder / f"{name}_out.nii.gz",
                        "defaced")
    except (ValueError, RuntimeError) as err:
        return f"{name:14s} the writer failed: {err}"
    a, b = nf.scaled(raw), nf.scaled(out)
    differ = int(np.count_nonzero(a[~mask] != b[~mask]))
    content = nf.file_bytes(out)
    leaked = [text.decode() for text in nf.IDENTIFYING_TEXT if text in content]
    mask_file = save_mask(mask, raw, folder / f"{name}_mask.nii.gz")
    codes = [(int(h["qform_code"]), int(h["sform_code"]))
             for h in (nf.file_header(raw), nf.file_header(mask_file))]
    return (f"{name:14s} {differ:9d} {len(nf.file_header(out).extensions):10d}  "
            f"{','.join(leaked) or '-':28s} {'yes' if codes[0] != codes[1] else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi", type=Path, help="a folder of IXI heads (the first is used)")
    args = parser.parse_args()
    head = load_brainsmall()
    print(f"{'form':14s} {'differ':>9s} {'extensions':>10s}  {'identifying text':28s} "
          f"mask codes changed")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for form in nf.FORMS:
            raw = nf.write_form(form, head, folder / form.name)
            mask = np.zeros(head.shape[:3], bool)
            mask[:, :, :30] = True
            print(measure(raw, mask, folder))
        if args.ixi:
            raw = sorted(args.ixi.glob("*.nii*"))[0]
            mask = np.zeros(nf.scaled(raw).shape, bool)
            mask[:, :30] = True
            print(measure(raw, mask, folder))


if __name__ == "__main__":
    main()
