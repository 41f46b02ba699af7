"""Thin nipype wrapper around :func:`bidsreface.collection.apply_shared_mask`."""

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


class _ShareMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="a collection member")
    leader_file = File(exists=True, mandatory=True, desc="the collection's leader")
    leader_relpath = traits.Str(mandatory=True, desc="the leader's path in the dataset")
    mask_file = File(exists=True, mandatory=True, desc="the leader's deface mask")
    mask_metrics_file = File(exists=True, mandatory=True, desc="the leader's mask figures")
    registration_file = File(exists=True, mandatory=True, desc="the leader's registration")


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
                                self.inputs.leader_file)
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
