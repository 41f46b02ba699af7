"""Thin nipype wrapper around :func:`bidsreface.qc.metrics.image_qc`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


def node_seconds(output_file: str | None) -> float | None:
    """Run time (s) of the nipype node that wrote *output_file*, from its result file.

    None when there is no file or the node's result does not record it.
    """
    if not output_file:
        return None
    from nipype.utils.filemanip import loadpkl

    for result_file in sorted(Path(output_file).parent.glob("result_*.pklz")):
        runtime = getattr(loadpkl(str(result_file)), "runtime", None)
        duration = getattr(runtime, "duration", None)
        if duration is not None:
            return round(float(duration), 2)
    return None


class _QCInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="raw image (rendered in memory only)")
    defaced_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    matrix_file = File(exists=True, mandatory=True, desc="template mm -> native mm")
    distance_file = File(exists=True, mandatory=True, desc="brain distance map")
    registration_file = File(exists=True, mandatory=True)
    mask_metrics_file = File(exists=True, mandatory=True)
    refaced_file = File(exists=True, desc="refaced image (absent: defaced only)")
    reface_metrics_file = File(exists=True, desc="refacing figures (JSON)")
    brain_mask_file = File(exists=True, desc="the image's own brain mask (absent: none)")
    brain_mask_metrics_file = File(exists=True, desc="how the brain mask was made (JSON)")
    brain_margin_mm = traits.Float(5.0, usedefault=True)
    seed = traits.Int(0, usedefault=True)


class _QCOutputSpec(TraitedSpec):
    metrics_file = File(exists=True, desc="QC metrics and verdict (JSON)")
    figures = OutputMultiObject(File(exists=True), desc="reportlets (PNG), de-identified only")


class ImageQC(SimpleInterface):
    """Metrics, verdict and reportlets of one de-identified image."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from bidsreface.qc.metrics import image_qc
        from bidsreface.qc.render import png_bytes

        def read(path):
            with open(path) as fobj:
                return json.load(fobj)

        refaced = self.inputs.refaced_file or None
        seconds = {"registration": node_seconds(self.inputs.matrix_file),
                   "brain_mask": node_seconds(self.inputs.brain_mask_file or None),
                   "defacing": node_seconds(self.inputs.defaced_file)}
        if refaced:
            seconds["refacing"] = node_seconds(refaced)
        metrics, figures = image_qc(
            self.inputs.source_file, self.inputs.defaced_file, self.inputs.mask_file,
            np.loadtxt(self.inputs.matrix_file), read(self.inputs.registration_file),
            read(self.inputs.mask_metrics_file), self.inputs.distance_file,
            brain_margin_mm=self.inputs.brain_margin_mm, refaced_file=refaced,
            reface_info=read(self.inputs.reface_metrics_file) if refaced else None,
            stage_seconds=seconds, seed=self.inputs.seed,
            brain_mask_file=self.inputs.brain_mask_file or None,
            brain_mask_info=(read(self.inputs.brain_mask_metrics_file)
                             if self.inputs.brain_mask_metrics_file else None))
        paths = []
        for name, image in sorted(figures.items()):
            path = os.path.join(runtime.cwd, f"{name}.png")
            with open(path, "wb") as fobj:
                fobj.write(png_bytes(image))
            paths.append(path)
        metrics_file = os.path.join(runtime.cwd, "qc.json")
        with open(metrics_file, "w") as fobj:
            json.dump(metrics, fobj, indent=2, allow_nan=False)
        self._results.update(metrics_file=metrics_file, figures=paths)
        return runtime
