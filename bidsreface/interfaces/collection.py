"""Thin nipype wrappers for file collections (:mod:`bidsreface.collection`): the leader's
registration, with the next parts as fallbacks, and the members' defacing in its mask."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _RegisterCollectionInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="the parts that may lead, in the leader rule's order")
    reference_file = File(exists=True, desc="session T1w (rigid registration to it)")
    reference_matrix = File(exists=True, desc="template -> reference matrix (text)")
    reference_distance = File(exists=True, desc="brain distance map of the reference")
    deface_ears = traits.Bool(False, usedefault=True, desc="guard the ears region too")
    seed = traits.Int(0, usedefault=True)


class _RegisterCollectionOutputSpec(TraitedSpec):
    matrix_file = File(exists=True, desc="template mm -> native mm, 4x4 text")
    metrics_file = File(exists=True, desc="registration quality metrics (JSON)")
    distance_file = File(exists=True, desc="template brain distance map around the face region")


class RegisterCollection(SimpleInterface):
    """Register a collection through its leader; when the leader's registration fails its
    check, through the next part that passes (the parts share one grid, so any part's
    registration places the same face mask). Only a failed check moves on to the next part;
    any other error fails the collection."""

    input_spec = _RegisterCollectionInputSpec
    output_spec = _RegisterCollectionOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        import nibabel as nb
        import numpy as np

        from bidsreface.deface.pipeline import register_file, register_file_to_reference
        from bidsreface.errors import RegistrationError

        failures = []
        for in_file in self.inputs.in_files:
            try:
                if self.inputs.reference_file:
                    ref = nb.load(self.inputs.reference_distance)
                    reg, (distance, affine) = register_file_to_reference(
                        in_file, self.inputs.reference_file,
                        np.loadtxt(self.inputs.reference_matrix), (ref.get_fdata(), ref.affine),
                        ears=self.inputs.deface_ears, seed=self.inputs.seed)
                else:
                    reg, (distance, affine) = register_file(
                        in_file, ears=self.inputs.deface_ears, seed=self.inputs.seed)
            except RegistrationError as err:
                failures.append(f"{Path(in_file).name}: {err.problem}")
                continue
            break
        else:
            raise RegistrationError(self.inputs.in_files[0],
                                    "no part of its file collection registers: "
                                    + "; ".join(failures))
        reg.metrics["registered_from"] = Path(in_file).name
        if failures:
            reg.metrics["failed_parts"] = failures
        distance_file = os.path.join(runtime.cwd, "brain_distance.nii.gz")
        nb.save(nb.Nifti1Image(distance.astype(np.float32), affine), distance_file)
        matrix_file = os.path.join(runtime.cwd, "matrix.txt")
        np.savetxt(matrix_file, reg.matrix)
        metrics_file = os.path.join(runtime.cwd, "registration.json")
        with open(metrics_file, "w") as fobj:
            json.dump(reg.to_dict(), fobj, indent=2)
        self._results.update(matrix_file=matrix_file, metrics_file=metrics_file,
                             distance_file=distance_file)
        return runtime


class _ShareMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="a collection member")
    leader_file = File(exists=True, mandatory=True, desc="the collection's leader")
    leader_relpath = traits.Str(mandatory=True, desc="the leader's path in the dataset")
    mask_file = File(exists=True, mandatory=True, desc="the leader's deface mask")
    mask_metrics_file = File(exists=True, mandatory=True, desc="the leader's mask figures")
    registration_file = File(exists=True, mandatory=True, desc="the leader's registration")
    keep_extensions = traits.Bool(False, usedefault=True, desc="keep NIfTI header extensions")


class _ShareMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="defaced member, header identical to the input")
    mask_file = File(exists=True, desc="the leader's deface mask")
    metrics_file = File(exists=True, desc="mask figures, with the leader they come from")
    registration_file = File(exists=True, desc="the leader's registration, noted as such")


class ShareMask(SimpleInterface):
    """Deface a collection member inside its leader's face mask."""

    input_spec = _ShareMaskInputSpec
    output_spec = _ShareMaskOutputSpec

    def _run_interface(self, runtime):
        from bidsreface.collection import apply_shared_mask

        out = apply_shared_mask(self.inputs.in_file, self.inputs.mask_file, runtime.cwd,
                                self.inputs.leader_file,
                                keep_extensions=self.inputs.keep_extensions)
        outputs = {}
        for name, source in (("mask", self.inputs.mask_metrics_file),
                             ("registration", self.inputs.registration_file)):
            with open(source) as fobj:
                content = json.load(fobj)
            content["mask_from"] = self.inputs.leader_relpath
            outputs[f"{name}_json"] = os.path.join(runtime.cwd, f"{name}.json")
            with open(outputs[f"{name}_json"], "w") as fobj:
                json.dump(content, fobj, indent=2)
        self._results.update(out_file=str(out), mask_file=self.inputs.mask_file,
                             metrics_file=outputs["mask_json"],
                             registration_file=outputs["registration_json"])
        return runtime
