"""Load and check input images; write outputs that keep the input's exact header.

nibabel reports what it fixes in a header it reads (``pixdim[1,2,3] should be non-zero``) on
its own logger, which prints to the terminal (twice once logging is configured), in every
process that loads the image. Importing this module sends those messages to nipype's interface
logger instead (:func:`route_nibabel_log`): the run log, and the terminal only with ``-v``.
What bidsreface assumed of an image's geometry is said once per image instead, before the run
(:func:`geometry_note`).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.nifti1 import extension_codes
from nibabel.openers import ImageOpener

from . import __version__
from .errors import ImageError

#: The logger nibabel reports header problems on, and where bidsreface sends them.
NIBABEL_LOGGER, NIBABEL_TARGET = "nibabel.global", "nipype.interface"


class _Forward(logging.Handler):
    """Hands a record to another logger (its handlers, and their parents'), at its level."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(self.target)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def route_nibabel_log() -> None:
    """Send nibabel's header messages to :data:`NIBABEL_TARGET` instead of the terminal (its
    own stream handler, and the root logger's); done once per process."""
    logger = logging.getLogger(NIBABEL_LOGGER)
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:  # nibabel's own, to stderr
            logger.removeHandler(handler)
    if not any(isinstance(handler, _Forward) for handler in logger.handlers):
        logger.addHandler(_Forward(NIBABEL_TARGET))
    logger.propagate = False


route_nibabel_log()

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


#: Free-text header fields that converters and tools fill with names, dates and notes.
TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


def read_header(path: str | Path) -> nb.Nifti1Header:
    """The header exactly as the file stores it: scaling, ``vox_offset`` and extensions included.

    nibabel moves a loaded image's scaling into its data proxy and blanks ``scl_slope``,
    ``scl_inter`` and ``vox_offset`` in ``img.header``; an output written with a copy of that
    header would read back off by the slope. This header is read from the file itself (a
    :class:`nibabel.Nifti2Header` for a NIfTI-2 file).

    The fields are taken as stored, unchecked: nibabel's checks would "fix" them (a ``pixdim``
    of 0 read as 1), and an output written with that header would carry a voxel size that
    its sform contradicts.
    """
    with ImageOpener(path) as fobj:
        start = fobj.read(4)
        sizes = {int.from_bytes(start, "little"), int.from_bytes(start, "big")}
        header_class = nb.Nifti2Header if 540 in sizes else nb.Nifti1Header
        if not sizes & {348, 540}:
            raise ValueError(f"{path} is not a NIfTI-1 or NIfTI-2 file")
        fobj.seek(0)
        return header_class.from_fileobj(fobj, check=False)


def geometry_note(path: str | Path) -> str | None:
    """What was assumed of an image's geometry where its header's is missing or inconsistent
    (one sentence); None when the header says it plainly. The output keeps the header as
    stored either way.

    The image is read as nibabel reads it (the sform where its code is set, else the qform,
    else a base orientation), and so is every step of bidsreface.
    """
    try:
        header = read_header(path)
    except Exception:  # nibabel raises many types: the run fails it with the reason (load_image)
        return None
    pixdim = np.asarray(header["pixdim"][1:4], np.float64)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    sizes = "x".join(f"{z:g}" for z in pixdim)
    valid = bool(np.all(np.isfinite(pixdim)) and np.all(pixdim > 0))
    kept = "the output keeps the header as stored"
    if qcode == 0 and scode == 0:
        fixed = header.copy()  # pixdim as nibabel reads it: sizes not positive taken as 1
        dims = np.array(header["pixdim"], np.float64)
        good = np.isfinite(dims[1:4]) & (dims[1:4] != 0)
        dims[1:4] = np.where(good, np.abs(np.nan_to_num(dims[1:4])), 1.0)
        fixed["pixdim"] = dims
        axes = "".join(nb.aff2axcodes(fixed.get_base_affine()))
        return (f"no orientation stored (qform and sform codes 0): assumed {axes} voxel axes "
                f"(nibabel's default for such files) and a "
                f"{'x'.join(f'{z:g}' for z in fixed['pixdim'][1:4])} mm voxel size, centred "
                f"on the volume; check the face in the QC figures; {kept}")
    if scode > 0:
        sform = header.get_sform()
        used = "x".join(f"{z:.3g}" for z in np.sqrt((sform[:3, :3] ** 2).sum(axis=0)))
        if not valid:
            return (f"pixdim {sizes} is not a voxel size: the sform's ({used} mm) was used; "
                    f"{kept}")
        if qcode > 0:
            last = [n - 1 for n in (*header.get_data_shape()[:3], 1, 1)[:3]]
            corners = np.array([[i, j, k, 1] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                               np.float64) * [*last, 1]
            apart = float(np.abs(corners @ (header.get_qform() - sform).T).max())
            if apart > 0.01:
                return (f"qform and sform disagree (by up to {apart:.2g} mm across the volume): "
                        f"the sform was used (as nibabel reads it); {kept}")
        return None
    if not valid:
        return (f"pixdim {sizes} is not a voxel size and no sform is set: the qform's "
                f"orientation was used with a voxel size of 1 mm where pixdim is not positive "
                f"(nibabel's fix); {kept}")
    return None


def scaling(header: nb.Nifti1Header) -> tuple[float, float]:
    """``(slope, inter)`` a reader applies: ``(1, 0)`` where the file asks for no scaling (slope
    0 or NaN), as nibabel reads it.

    >>> h = nb.Nifti1Header(); h.set_data_dtype(np.int16)
    >>> h["scl_slope"], h["scl_inter"] = 0, 5
    >>> scaling(h)
    (1.0, 0.0)
    >>> h["scl_slope"] = 2.5
    >>> scaling(h)
    (2.5, 5.0)
    """
    slope, inter = header.get_slope_inter()
    return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))


def to_stored(values: np.ndarray, header: nb.Nifti1Header) -> np.ndarray:
    """Intensities as a reader sees them turned into the values ``header`` stores: the inverse
    of its scaling, rounded and clipped to its dtype (native byte order).

    >>> h = nb.Nifti1Header(); h.set_data_dtype(np.uint8); h.set_slope_inter(13.9, 0)
    >>> to_stored(np.array([0.0, 139.0, 1e6, -5.0]), h)
    array([  0,  10, 255,   0], dtype=uint8)
    """
    slope, inter = scaling(header)
    dtype = header.get_data_dtype().newbyteorder("=")
    raw = (np.asarray(values, np.float64) - inter) / slope
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    if np.issubdtype(dtype, np.integer):
        raw = np.rint(raw)
    return np.clip(raw, info.min, info.max).astype(dtype)


def stored_background(stored: np.ndarray, header: nb.Nifti1Header) -> np.ndarray:
    """The stored value whose scaled value is the image's background (see
    :func:`background_value`, taken on the values a reader sees).

    >>> h = nb.Nifti1Header(); h.set_data_dtype(np.int16); h.set_slope_inter(2.0, -100.0)
    >>> int(stored_background(np.array([10, 70, 900], np.int16), h))
    50
    """
    slope, inter = scaling(header)
    ends = np.array([stored.min(), stored.max()], np.float64) * slope + inter
    return to_stored(np.asarray(background_value(ends)), header)


def stored_values(path: str | Path) -> np.ndarray:
    """The values as stored on disk (no scaling), as a 3D array in the file's dtype."""
    raw = nb.load(path)
    return np.asanyarray(raw.dataobj.get_unscaled()).reshape(raw.shape[:3])


def in_memory(path: str | Path) -> nb.Nifti1Image:
    """A single-file NIfTI-1 or NIfTI-2 image read (and decompressed) once into memory: its
    values and its stored values (``dataobj.get_unscaled()``) then come without a second
    read."""
    content = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        content = gzip.decompress(content)
    nifti2 = 540 in (int.from_bytes(content[:4], "little"), int.from_bytes(content[:4], "big"))
    return (nb.Nifti2Image if nifti2 else nb.Nifti1Image).from_bytes(content)


def header_identifiers(path: str | Path) -> dict:
    """What of a file's header can identify a person or a site and is not kept in outputs: its
    extensions (code and name) and its non-empty free-text fields (:data:`TEXT_FIELDS`)."""
    header = read_header(path)
    return {
        "extensions": [{"code": int(ext.get_code()),
                        "name": str(extension_codes.label.get(int(ext.get_code()), "unknown"))}
                       for ext in header.extensions],
        "text_fields": [name for name in TEXT_FIELDS if name in header
                        and bytes(header[name]).strip(b"\0 ")],
    }


def output_header(source: str | Path, note: str, *,
                  keep_extensions: bool = False) -> nb.Nifti1Header:
    """The header an output of ``source`` is written with: the file's own (geometry, dtype,
    scaling, units, ``dim_info``, slice timing, ``intent_code``), its free-text fields cleared
    and ``descrip`` set to *note*, its extensions dropped unless *keep_extensions*."""
    header = read_header(source)
    for name in TEXT_FIELDS:
        if name in header:
            header[name] = b""
    header["descrip"] = f"{note} by bidsreface {__version__}"[:79].encode()
    if not keep_extensions:
        header.extensions.clear()
    header["vox_offset"] = 0  # written as the smallest offset that holds header and extensions
    return header


def save_like(stored: np.ndarray, source: str | Path, out_path: str | Path, note: str, *,
              keep_extensions: bool = False) -> Path:
    """Write stored values with the header of ``source`` (see :func:`output_header`).

    ``stored`` holds values as the file stores them (see :func:`stored_values`), so voxels not
    changed read back identical, as stored bytes and as scaled values. The file is written
    under a temporary name and renamed, so a half-written output never exists.
    """
    header = output_header(source, note, keep_extensions=keep_extensions)
    stored = np.asarray(stored)
    dtype = header.get_data_dtype()
    if (stored.size != int(np.prod(header.get_data_shape()))
            or stored.dtype.newbyteorder("=") != dtype.newbyteorder("=")):
        raise ValueError(f"stored values do not match {source}: {stored.dtype} {stored.shape}")
    return _write_atomic(Path(out_path), nifti_bytes(header, stored))


def nifti_bytes(header: nb.Nifti1Header, stored: np.ndarray) -> bytes:
    """A single-file NIfTI image: *header*, its extensions, then *stored* in its dtype."""
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * max(int(header["vox_offset"]) - buffer.tell(), 0))
    data = np.asarray(stored).reshape(header.get_data_shape())
    buffer.write(data.astype(header.get_data_dtype(), copy=False).tobytes(order="F"))
    return buffer.getvalue()


def changed_voxels(raw_file: str | Path, out_file: str | Path, mask: np.ndarray) -> dict:
    """Voxels that differ between an input and its output, outside and inside ``mask``: as
    stored (bytes) and as a reader sees them (scaled values). Raises ``ValueError`` for
    images of different grids (a 4D image of one volume and its 3D copy compare)."""
    raw, out = nb.load(raw_file), nb.load(out_file)
    shape = raw.shape[:3]
    if out.shape[:3] != shape or int(np.prod(out.shape)) != int(np.prod(raw.shape)):
        raise ValueError(f"shape {out.shape} != {raw.shape}")
    mask = np.asarray(mask, bool).reshape(shape)
    a, b = (np.asanyarray(img.dataobj.get_unscaled()).reshape(shape) for img in (raw, out))
    if a.dtype.newbyteorder("=") == b.dtype.newbyteorder("="):
        bits = f"u{a.dtype.itemsize}"
        stored = (a.astype(a.dtype.newbyteorder("=")).view(bits)
                  != b.astype(b.dtype.newbyteorder("=")).view(bits))
    else:
        stored = np.ones(shape, bool)
    del a, b
    a, b = (np.asanyarray(img.dataobj).reshape(shape) for img in (raw, out))
    values = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    del a, b
    either = stored | values
    return {"changed_outside_mask": int(np.count_nonzero(either & ~mask)),
            "changed_outside_mask_stored": int(np.count_nonzero(stored & ~mask)),
            "changed_outside_mask_values": int(np.count_nonzero(values & ~mask)),
            "changed_inside_mask": int(np.count_nonzero(either & mask))}


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
    """Write a uint8 mask on the grid of ``reference``: its header (3D, the same qform and
    sform with their codes, units), unscaled, without extensions or free text."""
    header = output_header(reference, "face mask")
    header.set_data_shape(header.get_data_shape()[:3])
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["intent_code"], header["cal_min"], header["cal_max"] = 0, 0, 0
    return _write_atomic(Path(out_path), nifti_bytes(header, np.asarray(mask).astype(np.uint8)))
