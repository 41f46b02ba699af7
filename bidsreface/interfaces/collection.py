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

from .deface import (
    RegistrationOptions,
    RegistrationOutputs,
    register_with,
    write_registration,
)


class _RegisterCollectionInputSpec(RegistrationOptions):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="the parts that may lead, in the leader rule's order")


class RegisterCollection(SimpleInterface):
    """Register a collection through its leader; when the leader's registration fails its
    check, through the next part that passes (the parts share one grid, so any part's
    registration places the same face mask). Only a failed check moves on to the next part;
    any other error fails the collection."""

    input_spec = _RegisterCollectionInputSpec
    output_spec = RegistrationOutputs

    def _run_interface(self, runtime):
        from pathlib import Path

        from bidsreface.errors import RegistrationError

        failures = []
        for in_file in self.inputs.in_files:
            try:
                reg, distance, affine = register_with(in_file, self.inputs)
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
        self._results.update(write_registration(runtime.cwd, reg, distance, affine))
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
