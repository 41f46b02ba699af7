"""The participant workflow: register, mask and deface every selected image."""

from __future__ import annotations

import re

from nipype.pipeline import engine as pe

from ..bids import AnatImage
from ..config import OUTPUT_SETTINGS, Settings, participant_seed

REFERENCE_SUFFIX = "T1w"


def node_key(image: AnatImage) -> str:
    """A node-name-safe key for an image, unique within its participant.

    >>> node_key(AnatImage.from_path("/d/sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz"))
    'ses_1_run_2_T1w'
    """
    stem = image.path.name.split(".")[0]
    stem = stem[len(f"sub-{image.subject}_"):]
    return re.sub(r"[^0-9a-zA-Z]+", "_", stem)


def workflow_name(subject: str) -> str:
    """The name of a participant's workflow.

    >>> workflow_name("01")
    'sub_01_wf'
    """
    return f"sub_{re.sub(r'[^0-9a-zA-Z]', '_', subject)}_wf"


def session_references(images: list[AnatImage]) -> dict[AnatImage, AnatImage | None]:
    """For each image, the T1w of its session that it follows (None: the template).

    >>> imgs = [AnatImage.from_path(f"/d/sub-1/anat/sub-1_{s}.nii.gz") for s in ("T2w", "T1w")]
    >>> [(i.suffix, r.suffix if r else None) for i, r in session_references(imgs).items()]
    [('T2w', 'T1w'), ('T1w', None)]
    """
    firsts: dict[str | None, AnatImage] = {}
    for image in sorted(images, key=lambda i: i.path.name):
        if image.suffix == REFERENCE_SUFFIX:
            firsts.setdefault(image.session, image)
    return {image: (None if image.suffix == REFERENCE_SUFFIX else firsts.get(image.session))
            for image in images}


def reface_plan(image: AnatImage, settings: Settings) -> tuple[str, str | None]:
    """How an image is refaced: ``(method, model file)``; ``none`` means defaced only.

    T1w follows ``--reface``; another contrast is refaced only by a model installed for it
    (the template's face, the prior and the packaged model are T1w).

    >>> from pathlib import Path
    >>> s = Settings(bids_dir=Path("/d"), output_dir=Path("/o"), analysis_level="participant",
    ...              work_dir=Path("/w"), reface="template")
    >>> reface_plan(AnatImage.from_path("/d/sub-1/anat/sub-1_T1w.nii.gz"), s)
    ('template', None)
    >>> reface_plan(AnatImage.from_path("/d/sub-1/anat/sub-1_T2w.nii.gz"), s)
    ('none', None)
    """
    if settings.reface == "none":
        return "none", None
    if image.suffix == REFERENCE_SUFFIX:
        if settings.reface in ("template", "prior"):
            return settings.reface, None
        model = settings.reface_model
    else:
        from ..reface.weights import packaged_model_path

        model = packaged_model_path(image.suffix, settings.reface_region)
    return ("cgan", str(model)) if model is not None else ("none", None)


def uses_gpu(device: str) -> bool:
    """Whether the generator runs on CUDA: ``--device cuda``, or ``auto`` with a GPU.

    >>> uses_gpu("cpu"), uses_gpu("cuda")
    (False, True)
    """
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def brain_threads(settings: Settings) -> int:
    """Threads of a T1w's brain-mask step: ``--omp-nthreads``, leaving one process to the
    image's registration (ANTs, one thread), which needs nothing from it and runs beside it.

    >>> from dataclasses import replace
    >>> base = Settings(None, None, "participant", None)
    >>> [brain_threads(replace(base, nprocs=n, omp_nthreads=min(n, 8))) for n in (1, 2, 4, 16)]
    [1, 1, 3, 8]
    """
    return max(1, min(settings.omp_nthreads, settings.nprocs - 1))


def init_participant_wf(subject: str, images: list[AnatImage], settings: Settings,
                        name: str | None = None, fingerprints: dict | None = None,
                        skip: frozenset = frozenset()) -> pe.Workflow:
    """Deface every image of one participant.

    Images in *skip* (done by an earlier run, see :mod:`bidsreface.resume`) get no nodes,
    except the registration and brain mask of a T1w that a redone image of its session
    follows.
    *fingerprints* (``{image: sha256}``) are recorded with each image's outputs.

    Each image gets a registration node (to the template, or rigidly to its session's T1w),
    a brain-mask node ``brainmask_<key>`` (a T1w's own brain from the network; another
    contrast's carried from its session's T1w; none without a T1w in the session, where the
    template brain alone guards the image) and a defacing node, except the members of a file
    collection other than its leader (:mod:`bidsreface.collection`), which get a node
    ``mask_<key>`` that applies the leader's mask (and are checked against the leader's
    brain); then a refacing node ``reface_<key>`` (see :func:`reface_plan`), a QC node
    ``qc_<key>`` (metrics, verdict and reportlets; the original face is rendered in memory
    only) and a derivatives sink ``ds_<key>``.

    Inputs
    ------
    None: the images are fixed when the workflow is built.

    Outputs
    -------
    Written by the sinks under ``settings.output_dir``; crash files go to
    ``<output_dir>/sub-<label>/log``.
    """
    from ..collection import collection_leaders, registration_candidates, whole_collections
    from ..interfaces.bids import DerivativesSink
    from ..interfaces.collection import RegisterCollection, ShareMask
    from ..interfaces.deface import BrainMask, DefaceImage, RegisterImage
    from ..interfaces.qc import ImageQC
    from ..interfaces.reface import RefaceImage

    workflow = pe.Workflow(name=name or workflow_name(subject))
    crash_config = {"execution": {
        "crashdump_dir": str(settings.output_dir / f"sub-{subject}" / "log"),
        "crashfile_format": "txt",
    }}
    recorded = {key: getattr(settings, key) for key in OUTPUT_SETTINGS}
    registrations, masks, brains = {}, {}, {}
    references = session_references(images)
    leaders = collection_leaders(images)
    members: dict[AnatImage, list[AnatImage]] = {}
    for member, leader in leaders.items():
        members.setdefault(leader, []).append(member)
    skip = whole_collections(skip, leaders) if leaders else skip
    followed = {references[i] for i in images if i not in skip}
    fingerprints = fingerprints or {}
    # references first, then collection leaders, so that followers can connect to their node
    for image in sorted(images, key=lambda i: (i in leaders, references[i] is not None)):
        if image in skip and image not in followed:
            continue
        key = node_key(image)
        leader = leaders.get(image)
        if leader is not None:  # a collection member: its leader's registration and mask
            register = registrations[leader]
            deface = pe.Node(
                ShareMask(in_file=str(image.path), leader_file=str(leader.path),
                          leader_relpath=leader.relpath,
                          keep_extensions=settings.keep_nifti_extensions),
                name=f"mask_{key}", mem_gb=1.0)
            workflow.connect([
                (register, deface, [("metrics_file", "registration_file")]),
                (masks[leader], deface, [("mask_file", "mask_file"),
                                         ("metrics_file", "mask_metrics_file")]),
            ])  # fmt: skip
            registration = (deface, "registration_file")
        elif image in members:  # a collection's leader: its parts as fallbacks
            register = pe.Node(
                RegisterCollection(in_files=[str(i.path) for i in registration_candidates(
                                       image, members[image])],
                                   deface_ears=settings.deface_ears,
                                   whole_head=settings.reface_region == "head",
                                   seed=settings.random_seed),
                name=f"register_{key}", n_procs=1, mem_gb=1.0)  # ANTs: one thread
        else:
            register = pe.Node(
                RegisterImage(in_file=str(image.path), deface_ears=settings.deface_ears,
                              whole_head=settings.reface_region == "head",
                              seed=settings.random_seed),
                name=f"register_{key}", n_procs=1, mem_gb=1.0)  # ANTs: one thread
        if leader is None:
            reference = references[image]
            if reference is not None and reference in registrations:
                register.inputs.reference_file = str(reference.path)
                workflow.connect([
                    (registrations[reference], register,
                     [("matrix_file", "reference_matrix"),
                      ("distance_file", "reference_distance")]),
                ])  # fmt: skip
            registrations[image] = register
            # the image's own brain: a T1w's from the network, a follower's carried from its
            # T1w
            brain = None
            if image.suffix == REFERENCE_SUFFIX:
                threads = brain_threads(settings)
                brain = pe.Node(BrainMask(in_file=str(image.path), nthreads=threads),
                                name=f"brainmask_{key}", n_procs=threads, mem_gb=1.5)
            elif reference is not None and reference in brains:
                brain = pe.Node(BrainMask(in_file=str(image.path),
                                          reference_name=reference.path.name),
                                name=f"brainmask_{key}", mem_gb=1.0)
                workflow.connect([
                    (brains[reference], brain, [("mask_file", "reference_mask")]),
                    (registrations[reference], brain, [("matrix_file", "reference_matrix")]),
                    (register, brain, [("matrix_file", "matrix_file")]),
                ])  # fmt: skip
            if brain is not None:
                brains[image] = brain
            if image in skip:  # its registration and brain are needed by a follower only
                workflow.add_nodes([register] + ([brain] if brain is not None else []))
                continue
            deface = pe.Node(
                DefaceImage(in_file=str(image.path), deface_ears=settings.deface_ears,
                            whole_head=settings.reface_region == "head",
                            brain_margin_mm=settings.brain_margin_mm,
                            keep_extensions=settings.keep_nifti_extensions),
                name=f"deface_{key}", mem_gb=1.5)
            workflow.connect([
                (register, deface, [("matrix_file", "matrix_file"),
                                    ("distance_file", "distance_file")]),
            ])  # fmt: skip
            if brain is not None:
                workflow.connect([(brain, deface, [("mask_file", "brain_mask_file")])])
            registration = (register, "metrics_file")
        masks[image] = deface
        sink = pe.Node(
            DerivativesSink(source_file=str(image.path), bids_dir=str(settings.bids_dir),
                            output_dir=str(settings.output_dir), settings=recorded,
                            **({"fingerprint": fingerprints[image]}
                               if image in fingerprints else {})),
            name=f"ds_{key}", run_without_submitting=True, mem_gb=1.0)
        qc = pe.Node(
            ImageQC(source_file=str(image.path), brain_margin_mm=settings.brain_margin_mm,
                    seed=settings.random_seed),
            name=f"qc_{key}", n_procs=1, mem_gb=1.5)
        workflow.connect([
            (register, qc, [("matrix_file", "matrix_file"),
                            ("distance_file", "distance_file")]),
            (registration[0], qc, [(registration[1], "registration_file")]),
            (deface, qc, [("out_file", "defaced_file"), ("mask_file", "mask_file"),
                          ("metrics_file", "mask_metrics_file")]),
            (registration[0], sink, [(registration[1], "registration_file")]),
            (deface, sink, [("out_file", "defaced_file"), ("mask_file", "mask_file"),
                            ("metrics_file", "mask_metrics_file")]),
            (qc, sink, [("metrics_file", "qc_file"), ("figures", "figures")]),
        ])  # fmt: skip
        brain = brains.get(leader if leader is not None else image)
        if brain is not None:  # a member shares its leader's grid, so its brain mask too
            workflow.connect([(brain, qc, [("mask_file", "brain_mask_file"),
                                           ("metrics_file", "brain_mask_metrics_file")])])
        method, model = reface_plan(image, settings)
        if method != "none":
            reface = pe.Node(
                RefaceImage(method=method,
                            seed=participant_seed(settings.random_seed, image.subject),
                            device=settings.device,
                            use_gpu=method == "cgan" and uses_gpu(settings.device),
                            **({"model_file": model} if model else {})),
                name=f"reface_{key}", mem_gb=2.0)
            workflow.connect([
                (register, reface, [("matrix_file", "matrix_file")]),
                (deface, reface, [("out_file", "defaced_file"), ("mask_file", "mask_file")]),
                (reface, sink, [("out_file", "refaced_file"),
                                ("metrics_file", "reface_metrics_file")]),
                (reface, qc, [("out_file", "refaced_file"),
                              ("metrics_file", "reface_metrics_file")]),
            ])  # fmt: skip
            if brain is not None and method == "cgan":
                workflow.connect([(brain, reface, [("mask_file", "brain_mask_file")])])
    for name in workflow.list_node_names():
        workflow.get_node(name).config = crash_config
    return workflow
