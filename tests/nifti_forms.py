"""A zoo of NIfTI storage forms, each holding a real head (VolPack's brainsmall).

Every file is written byte by byte with nibabel's header classes, not with bidsreface's own
writer, so that the tests compare bidsreface against an independent reading of the format.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.nifti1 import Nifti1DicomExtension, Nifti1Extension
from nibabel.openers import ImageOpener

#: What a DICOM-bearing extension of the zoo says; it must never reach an output.
PATIENT_NAME = "Doe^Jane"
#: Strings of the zoo's extensions and free-text fields; none may reach an output.
IDENTIFYING_TEXT = (PATIENT_NAME.encode(), b"St Elsewhere", b"jdoe@mri-host", b"19700101",
                    b"2024-05-01")


@dataclass(frozen=True)
class Form:
    """One way a NIfTI file stores a head."""

    name: str
    dtype: str
    slope: float = 1.0
    inter: float = 0.0
    gain: float = 1.0  # stored = round(head * gain) for the stored dtype
    extension: str = ".nii.gz"
    nifti2: bool = False
    endianness: str = "<"
    qform_code: int = 1
    sform_code: int = 1
    sform_shift_mm: float = 0.0  # sform differs from the qform by this shift along x
    four_d: bool = False
    vox_offset: int = 0
    extensions: tuple[str, ...] = ()
    text: bool = False
    intent_code: int = 0
    raw_fields: dict = field(default_factory=dict)  # written as they are (slope 0, NaN)


FORMS = (
    Form("u8", "uint8"),
    Form("u8slope", "uint8", slope=13.9, extensions=("afni",)),
    Form("i16scaled", "int16", slope=0.37, inter=-12.5, gain=40.0, extension=".nii"),
    Form("i16big", "int16", slope=2.0, gain=10.0, endianness=">"),
    Form("i32slopezero", "int32", gain=1000.0, raw_fields={"scl_slope": 0.0, "scl_inter": 7.0}),
    Form("f32slopenan", "float32", gain=1 / 255, raw_fields={"scl_slope": np.nan,
                                                             "scl_inter": np.nan}),
    Form("f64scaled", "float64", slope=1.5, inter=3.0, gain=0.01),
    Form("nifti2", "int16", slope=0.8, gain=4.0, nifti2=True),
    Form("f32bignifti2", "float32", gain=3.0, nifti2=True, endianness=">", extension=".nii"),
    Form("qformonly", "int16", gain=2.0, sform_code=0),
    Form("sformonly", "int16", gain=2.0, qform_code=0, sform_code=2),
    Form("codesdiffer", "int16", gain=2.0, qform_code=1, sform_code=4, sform_shift_mm=2.0),
    Form("onevolume", "int16", slope=1.25, gain=3.0, four_d=True),
    Form("offset", "int16", slope=0.5, gain=2.0, vox_offset=2048, text=True, intent_code=1001,
         extensions=("comment", "dicom", "afni")),
)


def _extension(kind: str):
    if kind == "afni":  # an AFNI history names a user, a host and a date
        return Nifti1Extension(4, b"<?xml version='1.0' ?><AFNI_attributes><AFNI_atr "
                                  b"atr_name=\"HISTORY_NOTE\">[jdoe@mri-host: 2024-05-01] "
                                  b"3dcalc</AFNI_atr></AFNI_attributes>")
    if kind == "comment":
        return Nifti1Extension(6, b"scanned at St Elsewhere")
    import pydicom

    dataset = pydicom.Dataset()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientBirthDate = "19700101"
    dataset.InstitutionName = "St Elsewhere"
    return Nifti1DicomExtension(2, dataset)


def header_for(form: Form, shape: tuple[int, ...], affine: np.ndarray) -> nb.Nifti1Header:
    """The header of *form* for an image of *shape* and *affine*."""
    header = (nb.Nifti2Header if form.nifti2 else nb.Nifti1Header)(endianness=form.endianness)
    header.set_data_dtype(np.dtype(form.dtype))
    header.set_data_shape((*shape, 1) if form.four_d else shape)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    header.set_zooms((*zooms, 2.3) if form.four_d else zooms)
    header.set_qform(affine, code=form.qform_code) if form.qform_code else header.set_qform(None)
    if form.sform_code:
        sform = affine.copy()
        sform[0, 3] += form.sform_shift_mm
        header.set_sform(sform, code=form.sform_code)
    else:
        header.set_sform(None)
    header.set_xyzt_units("mm", "sec")
    header.set_dim_info(freq=0, phase=1, slice=2)
    header["slice_code"], header["slice_start"] = 1, 0
    header["slice_end"], header["slice_duration"] = shape[2] - 1, 0.02
    header["intent_code"] = form.intent_code
    header.set_slope_inter(form.slope, form.inter)
    for name, value in form.raw_fields.items():
        header[name] = value
    if form.text:
        header["descrip"] = b"Jane Doe 2024-05-01 09:13"
        header["aux_file"] = b"jdoe@mri-host"
        header["intent_name"] = b"St Elsewhere"
        if not form.nifti2:
            header["db_name"] = b"19700101"
    for kind in form.extensions:
        header.extensions.append(_extension(kind))
    if form.vox_offset:  # readers take extensions up to vox_offset: an "ignore" one fills it
        used = header.single_vox_offset + header.extensions.get_sizeondisk()
        header.extensions.append(Nifti1Extension(0, b"\0" * (form.vox_offset - used - 8)))
    header["vox_offset"] = form.vox_offset
    return header


def write_form(form: Form, head: nb.Nifti1Image, path: Path) -> Path:
    """Write *head*'s values in *form* to *path* (its extension is added)."""
    values = np.asarray(head.dataobj, np.float64).reshape(head.shape[:3])
    header = header_for(form, head.shape[:3], head.affine)
    dtype = header.get_data_dtype()
    stored = values * form.gain
    if np.issubdtype(dtype, np.integer):
        stored = np.clip(np.rint(stored), np.iinfo(dtype).min, np.iinfo(dtype).max)
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * (int(header["vox_offset"]) - buffer.tell()))
    buffer.write(stored.astype(dtype).reshape(header.get_data_shape()).tobytes(order="F"))
    content = buffer.getvalue()
    path = path.with_name(path.name + form.extension)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if form.extension == ".nii.gz" else content)
    return path


def file_header(path: Path) -> nb.Nifti1Header:
    """The header as the file stores it (nibabel's ``img.header`` drops the scaling)."""
    header_class = nb.load(path).header_class
    with ImageOpener(path) as fobj:
        return header_class.from_fileobj(fobj)


def file_bytes(path: Path) -> bytes:
    """A file's content, gunzipped where it is gzipped."""
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def scaled(path: Path) -> np.ndarray:
    """The 3D values a reader sees (nibabel, scaling applied)."""
    img = nb.load(path)
    return np.asanyarray(img.dataobj).reshape(img.shape[:3])


#: Header fields an output keeps from its input.
KEPT_FIELDS = ("dim_info", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c",
               "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y",
               "srow_z", "xyzt_units", "slice_code", "slice_start", "slice_end",
               "slice_duration", "intent_code", "datatype", "bitpix")
