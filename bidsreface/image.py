"""Load and check input images; write outputs that keep the input's exact header."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np

from . import __version__
from .errors import ImageError

#: Plausible limits for a head MRI.
MIN_VOXELS_PER_AXIS = 16
MAX_VOXELS = 1024**3 // 2
SPACING_RANGE_MM = (0.1, 8.0)


def load_image(path: str | Path) -> nb.Nifti1Image:
    """Load a head image, checked, as a 3D NIfTI (a 4D image with one volume is squeezed).

    Raises :class:`ImageError` naming the file for anything that cannot be a head MRI.
    The returned image holds the array in the file's own dtype, scaling applied lazily.
    """
    path = Path(path)
    try:
        img = nb.load(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except Exception as exc:  # nibabel raises several unrelated types for a bad file
        raise ImageError(path, f"not a readable NIfTI image ({_short(exc)})") from None
    if not isinstance(img, nb.Nifti1Image | nb.Nifti2Image):
        raise ImageError(path, f"not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 4:
        raise ImageError(path, f"4D image with {shape[3]} volumes; expected a single 3D volume")
    if len(shape) != 3:
        raise ImageError(path, f"{len(img.shape)}D image of shape {img.shape}; expected 3D")
    if min(shape) < MIN_VOXELS_PER_AXIS or int(np.prod(shape)) > MAX_VOXELS:
        raise ImageError(path, f"implausible size {shape} for a head image")
    zooms = img.header.get_zooms()[:3]
    if not all(SPACING_RANGE_MM[0] <= z <= SPACING_RANGE_MM[1] for z in zooms):
        raise ImageError(path, f"implausible voxel size {tuple(float(z) for z in zooms)} mm")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise ImageError(path, "invalid (singular or non-finite) affine")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(path, f"truncated or corrupt data ({_short(exc)})") from None
    finite = np.isfinite(data)
    if not finite.all():
        if not finite.any():
            raise ImageError(path, "image contains no finite value (all NaN/Inf)")
        raise ImageError(path, f"image contains {int((~finite).sum())} NaN/Inf voxels")
    if float(data.max()) <= float(data.min()):
        raise ImageError(path, "image is constant (no head in it)")
    header = img.header.copy()
    header.set_data_shape(shape)
    out = nb.Nifti1Image(data, img.affine, header)
    out.set_filename(str(path))
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:160] if text else type(exc).__name__


def background_value(data: np.ndarray):
    """The value defaced voxels take: 0 when the range includes it, else the image minimum.

    >>> background_value(np.array([0, 5, 9]))
    0
    >>> float(background_value(np.array([3.0, 5.0])))
    3.0
    """
    lo = data.min()
    return 0 if lo <= 0 else lo


def stored_values(path: str | Path) -> np.ndarray:
    """The values as stored on disk (no scaling), as a 3D array in the file's dtype."""
    raw = nb.load(path)
    return np.asanyarray(raw.dataobj.get_unscaled()).reshape(raw.shape[:3])


def save_like(stored: np.ndarray, source: str | Path, out_path: str | Path, note: str) -> Path:
    """Write stored values with the exact header, affine, shape and dtype of ``source``.

    ``stored`` holds values as the file stores them (see :func:`stored_values`), so voxels not
    changed stay bit-identical, scaling included. Only the header's ``descrip`` changes
    (``note`` and the bidsreface version). The file is written under a temporary name and
    renamed, so a half-written output never exists.
    """
    raw = nb.load(source)
    header = raw.header.copy()
    header["descrip"] = f"{note} by bidsreface {__version__}"[:79].encode()
    dtype = header.get_data_dtype()
    stored = np.asarray(stored)
    if stored.size != int(np.prod(raw.shape)) or stored.dtype != dtype.newbyteorder("="):
        raise ValueError(f"stored values do not match {source}: {stored.dtype} {stored.shape}")
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * max(int(header.get_data_offset()) - buffer.tell(), 0))
    buffer.write(stored.reshape(raw.shape).astype(dtype, copy=False).tobytes(order="F"))
    return _write_atomic(Path(out_path), buffer.getbuffer())


def _write_atomic(path: Path, content) -> Path:
    """Write a NIfTI file's bytes, gzipped for ``.gz`` with no time or name in the gzip header
    (the same image always gives the same bytes), through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw_file:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw_file, compresslevel=1,
                                   mtime=0) as fobj:
                    fobj.write(content)
            else:
                raw_file.write(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_mask(mask: np.ndarray, reference: str | Path, out_path: str | Path) -> Path:
    """Write a uint8 mask on the grid of ``reference`` (3D, same affine and qform/sform)."""
    raw = nb.load(reference)
    out = nb.Nifti1Image(mask.reshape(raw.shape[:3]).astype(np.uint8), raw.affine)
    out.set_qform(raw.header.get_qform(), code=int(raw.header["qform_code"]) or 1)
    out.set_sform(raw.header.get_sform(), code=int(raw.header["sform_code"]) or 1)
    out.header.set_xyzt_units(*raw.header.get_xyzt_units())
    out.header["descrip"] = f"face mask by bidsreface {__version__}".encode()
    return _write_atomic(Path(out_path), out.to_bytes())
