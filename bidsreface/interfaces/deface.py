"""Thin nipype wrappers around :mod:`bidsreface.deface.pipeline`."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class RegistrationOptions(BaseInterfaceInputSpec):
    """Where an image registers to (the template, or its session's T1w) and how."""

    reference_file = File(exists=True, desc="session T1w (rigid registration to it)")
    reference_matrix = File(exists=True, desc="template -> reference matrix (text)")
    reference_distance = File(exists=True, desc="brain distance map of the reference")
    deface_ears = traits.Bool(False, usedefault=True, desc="guard the ears region too")
    whole_head = traits.Bool(False, usedefault=True,
                             desc="the region is the whole non-brain head (--reface-region head)")
    seed = traits.Int(0, usedefault=True)


class _RegisterInputSpec(RegistrationOptions):
    in_file = File(exists=True, mandatory=True, desc="image to register")


class RegistrationOutputs(TraitedSpec):
    matrix_file = File(exists=True, desc="template mm -> native mm, 4x4 text")
    metrics_file = File(exists=True, desc="registration quality metrics (JSON)")
    distance_file = File(exists=True, desc="template brain distance map around the face region")


class RegisterImage(SimpleInterface):
    """Register an image to the template, or rigidly to its session's T1w when given."""

    input_spec = _RegisterInputSpec
    output_spec = RegistrationOutputs

    def _run_interface(self, runtime):
        self._results.update(write_registration(
            runtime.cwd, *register_with(self.inputs.in_file, self.inputs)))
        return runtime


def register_with(in_file: str, inputs) -> tuple:
    """Register *in_file* as *inputs* (:class:`RegistrationOptions`) say; returns the
    registration, the brain distance map and its affine."""
    import nibabel as nb
    import numpy as np

    from bidsreface.deface.pipeline import register_file, register_file_to_reference

    if inputs.reference_file:
        ref = nb.load(inputs.reference_distance)
        reg, (distance, affine) = register_file_to_reference(
            in_file, inputs.reference_file, np.loadtxt(inputs.reference_matrix),
            (ref.get_fdata(), ref.affine), ears=inputs.deface_ears, head=inputs.whole_head,
            seed=inputs.seed)
    else:
        reg, (distance, affine) = register_file(in_file, ears=inputs.deface_ears,
                                                head=inputs.whole_head, seed=inputs.seed)
    return reg, distance, affine


def write_registration(cwd: str, reg, distance, affine) -> dict:
    """Write a registration's matrix, metrics and brain distance map into *cwd*; returns the
    outputs of :class:`RegistrationOutputs`."""
    import nibabel as nb
    import numpy as np

    distance_file = os.path.join(cwd, "brain_distance.nii.gz")
    nb.save(nb.Nifti1Image(distance.astype(np.float32), affine), distance_file)
    matrix_file = os.path.join(cwd, "matrix.txt")
    np.savetxt(matrix_file, reg.matrix)
    metrics_file = os.path.join(cwd, "registration.json")
    with open(metrics_file, "w") as fobj:
        json.dump(reg.to_dict(), fobj, indent=2)
    return {"matrix_file": matrix_file, "metrics_file": metrics_file,
            "distance_file": distance_file}


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image (a T1w, unless reference_mask)")
    matrix_file = File(exists=True, desc="template mm -> image mm (with reference_mask)")
    reference_mask = File(exists=True, desc="the session T1w's own brain mask, to carry")
    reference_matrix = File(exists=True, desc="template mm -> T1w mm (with reference_mask)")
    reference_name = traits.Str(desc="file name of the T1w whose mask is carried")
    nthreads = traits.Int(1, usedefault=True, desc="threads of the brain-mask network")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="the image's own brain mask (uint8, its grid)")
    metrics_file = File(exists=True, desc="how the mask was made (JSON)")


class BrainMask(SimpleInterface):
    """The image's own brain mask (deepbet on a T1w), or its session T1w's carried to it."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from bidsreface.deface.pipeline import brain_mask_file, carry_brain_mask_file

        if self.inputs.reference_mask:
            mask, info = carry_brain_mask_file(
                self.inputs.in_file, np.loadtxt(self.inputs.matrix_file),
                self.inputs.reference_mask, np.loadtxt(self.inputs.reference_matrix),
                runtime.cwd)
            info["brain_mask_from"] = self.inputs.reference_name or None
        else:
            mask, info = brain_mask_file(self.inputs.in_file, runtime.cwd,
                                         nthreads=self.inputs.nthreads)
        metrics_file = os.path.join(runtime.cwd, "brain_mask.json")
        with open(metrics_file, "w") as fobj:
            json.dump(info, fobj, indent=2)
        self._results.update(mask_file=str(mask), metrics_file=metrics_file)
        return runtime


class _DefaceInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    matrix_file = File(exists=True, mandatory=True)
    distance_file = File(exists=True, mandatory=True, desc="brain distance map")
    brain_mask_file = File(exists=True, desc="the image's own brain mask (absent: template)")
    deface_ears = traits.Bool(False, usedefault=True)
    whole_head = traits.Bool(False, usedefault=True, desc="remove the whole non-brain head")
    brain_margin_mm = traits.Float(5.0, usedefault=True)
    keep_extensions = traits.Bool(False, usedefault=True, desc="keep NIfTI header extensions")


class _DefaceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="defaced image, header identical to the input")
    mask_file = File(exists=True, desc="deface mask (uint8)")
    metrics_file = File(exists=True, desc="mask figures (JSON)")


class DefaceImage(SimpleInterface):
    """Pull the template face mask back to the image and set it to background."""

    input_spec = _DefaceInputSpec
    output_spec = _DefaceOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb
        import numpy as np

        from bidsreface.deface.pipeline import deface_file

        distance = nb.load(self.inputs.distance_file)
        own_brain = (np.asanyarray(nb.load(self.inputs.brain_mask_file).dataobj) > 0
                     if self.inputs.brain_mask_file else None)
        out, mask, info = deface_file(
            self.inputs.in_file, np.loadtxt(self.inputs.matrix_file), runtime.cwd,
            ears=self.inputs.deface_ears, head=self.inputs.whole_head,
            brain_margin_mm=self.inputs.brain_margin_mm,
            brain_distance=(distance.get_fdata(dtype=np.float32), distance.affine),
            own_brain=own_brain, keep_extensions=self.inputs.keep_extensions)
        metrics_file = os.path.join(runtime.cwd, "mask.json")
        with open(metrics_file, "w") as fobj:
            json.dump(info, fobj, indent=2)
        self._results.update(out_file=str(out), mask_file=str(mask), metrics_file=metrics_file)
        return runtime
