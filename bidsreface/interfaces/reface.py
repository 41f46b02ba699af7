"""Thin nipype wrapper around :mod:`bidsreface.reface`."""

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


class _RefaceInputSpec(BaseInterfaceInputSpec):
    defaced_file = File(exists=True, mandatory=True, desc="defaced image")
    mask_file = File(exists=True, mandatory=True, desc="its deface mask")
    matrix_file = File(exists=True, mandatory=True, desc="template mm -> native mm")
    brain_mask_file = File(exists=True, desc="the image's own brain mask (privacy models)")
    method = traits.Enum("cgan", "prior", "template", mandatory=True)
    model_file = File(exists=True, desc="refacing model (cgan)")
    seed = traits.Int(0, usedefault=True)
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda")
    use_gpu = traits.Bool(False, usedefault=True,
                          desc="runs on a GPU: MultiProc counts it against n_gpu_procs")


class _RefaceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="refaced image, header identical to the input")
    metrics_file = File(exists=True, desc="refacing figures (JSON)")


class RefaceImage(SimpleInterface):
    """Fill the defaced region with a synthetic face (cGAN, the population prior, or the
    template's face)."""

    input_spec = _RefaceInputSpec
    output_spec = _RefaceOutputSpec

    def _run_interface(self, runtime):
        import time

        import numpy as np

        start = time.perf_counter()
        matrix = np.loadtxt(self.inputs.matrix_file)
        out_file = os.path.join(runtime.cwd, "refaced.nii.gz")
        if self.inputs.method == "cgan":
            from bidsreface.reface.infer import reface_file, resolve_device
            from bidsreface.reface.weights import load_model

            device = resolve_device(self.inputs.device)
            out, info = reface_file(self.inputs.defaced_file, self.inputs.mask_file, matrix,
                                    load_model(self.inputs.model_file), out_file,
                                    seed=self.inputs.seed, device=device,
                                    brain_file=self.inputs.brain_mask_file or None)
            info["device"] = device
        elif self.inputs.method == "prior":
            from bidsreface.reface.prior import prior_reface_file

            out, info = prior_reface_file(self.inputs.defaced_file, self.inputs.mask_file,
                                          matrix, out_file, seed=self.inputs.seed,
                                          noise_seed=self.inputs.seed)
        else:
            from bidsreface.reface.template_face import template_reface_file

            out, info = template_reface_file(self.inputs.defaced_file, self.inputs.mask_file,
                                             matrix, out_file)
        info["seconds"] = round(time.perf_counter() - start, 2)
        metrics_file = os.path.join(runtime.cwd, "reface.json")
        with open(metrics_file, "w") as fobj:
            json.dump(info, fobj, indent=2)
        self._results.update(out_file=str(out), metrics_file=metrics_file)
        return runtime
