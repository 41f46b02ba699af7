"""Derivatives sink: verifies the defaced image and writes the BIDS outputs of one image."""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _SinkInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="raw image")
    bids_dir = Directory(exists=True, mandatory=True)
    output_dir = traits.Str(mandatory=True)
    defaced_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    registration_file = File(exists=True, mandatory=True)
    mask_metrics_file = File(exists=True, mandatory=True)
    refaced_file = File(exists=True, desc="refaced image (absent: defaced only)")
    reface_metrics_file = File(exists=True, desc="refacing figures (JSON)")
    qc_file = File(exists=True, desc="QC metrics and verdict (JSON)")
    figures = InputMultiObject(File(exists=True), desc="reportlets (PNG)")
    settings = traits.Dict(desc="settings recorded with the outputs")
    fingerprint = traits.Str(desc="what the outputs were made from (bidsreface.resume)")


class _SinkOutputSpec(TraitedSpec):
    qc_file = File(desc="per-image QC record")


class DerivativesSink(SimpleInterface):
    """Write ``desc-defaced``, ``desc-refaced``, ``defacemask``, sidecars, reportlets and the QC
    record."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        from bidsreface.bids import AnatImage
        from bidsreface.derivatives import qc_path, write_image_outputs

        image = AnatImage.from_path(self.inputs.source_file, self.inputs.bids_dir)
        with open(self.inputs.registration_file) as fobj:
            registration = json.load(fobj)
        with open(self.inputs.mask_metrics_file) as fobj:
            mask_info = json.load(fobj)
        reface_info = None
        if self.inputs.refaced_file:
            with open(self.inputs.reface_metrics_file) as fobj:
                reface_info = json.load(fobj)
        qc = None
        if isdefined(self.inputs.qc_file):
            with open(self.inputs.qc_file) as fobj:
                qc = json.load(fobj)
        figures = list(self.inputs.figures) if isdefined(self.inputs.figures) else []
        write_image_outputs(image, self.inputs.output_dir,
                            defaced_file=self.inputs.defaced_file,
                            mask_file=self.inputs.mask_file, registration=registration,
                            mask_info=mask_info, settings=dict(self.inputs.settings),
                            refaced_file=self.inputs.refaced_file or None,
                            reface_info=reface_info, qc=qc,
                            figures=figures,
                            fingerprint=(self.inputs.fingerprint
                                         if isdefined(self.inputs.fingerprint) else None))
        self._results["qc_file"] = str(qc_path(self.inputs.output_dir, image))
        return runtime
