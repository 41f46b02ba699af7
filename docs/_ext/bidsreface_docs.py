"""Directives that take lists from the code, so that the docs cannot drift from it.

``bidsreface-columns``
    The columns of ``group_<suffix>.tsv`` (``group``) or ``group_audit.tsv`` (``audit``), in
    the order the code writes them, each with its meaning from :data:`COLUMN_DOCS`. A column
    the code writes and this file does not describe is an error (the docs build fails).
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive, directives

#: What each column of ``group_<suffix>.tsv`` holds (``bidsreface.reports.tables.COLUMNS``).
GROUP_COLUMNS = {
    "source": "the raw image, relative to bids_dir",
    "status": "``ok`` or ``failed``",
    "reason": "why the image failed (empty when ok)",
    "flags": "why the group report points at the image (a metric out of its usual range)",
    "registration_ok": "whether the registration passed its quality check",
    "head_dice": "overlap of the head with the template's head after registration",
    "correlation": "correlation of the image with the template after registration",
    "scales": "the registration's scales along the three axes",
    "shear": "the registration's shear",
    "start_deg": "the starting rotation the registration kept",
    "mask_from": "the file-collection part whose registration and face mask the image shares",
    "face_volume_ml": "volume of the deface mask (ml)",
    "face_voxels": "voxels in the deface mask",
    "guard_voxels_removed": "voxels of the template face region the brain guard took back",
    "guard_overlap": "mask voxels inside the template brain's guard (must be 0)",
    "changed_outside_mask": "voxels changed outside the mask, all outputs (must be 0)",
    "changed_inside_mask": "voxels changed inside the mask by defacing",
    "refaced_changed_outside_mask": "voxels the refaced image changed outside the mask "
                                    "(must be 0)",
    "brain_guard": "``own+template`` (the image's own brain mask and the template's) or "
                   "``template``",
    "own_brain_changed": "voxels of the image's own brain mask changed (must be 0)",
    "own_guard_overlap": "mask voxels within the brain margin of the image's own brain "
                         "(must be 0)",
    "head_scale_original": "head size of the original (registration-based scale)",
    "etiv_original_ml": "estimated intracranial volume of the original (ml)",
    "defaced_head_scale": "head size of the defaced image",
    "defaced_etiv_ml": "estimated intracranial volume of the defaced image (ml)",
    "defaced_head_scale_change": "relative change of head size, defaced against original",
    "refaced_head_scale": "head size of the refaced image",
    "refaced_etiv_ml": "estimated intracranial volume of the refaced image (ml)",
    "refaced_head_scale_change": "relative change of head size, refaced against original",
    "original_face_detected": "whether a face was detected on the original's render "
                              "(in memory; never written)",
    "defaced_face_detected": "whether a face is detected on the defaced render (fails the "
                             "image)",
    "defaced_face_score": "face detector score on the defaced render",
    "defaced_face_distance": "face-embedding distance, defaced against original",
    "refaced_face_detected": "whether a face is detected on the refaced render",
    "refaced_face_score": "face detector score on the refaced render",
    "refaced_face_distance": "face-embedding distance, refaced against original (too close "
                             "fails the image)",
    "reface_method": "``cgan``, ``template`` or ``none``",
    "model": "name of the refacing model",
    "model_sha256": "sha256 of the refacing model file",
    "reface_fraction": "share of the mask's voxels the refacing filled with head",
    "seconds_registration": "seconds of the registration step",
    "seconds_brain_mask": "seconds of the image's own brain mask",
    "seconds_defacing": "seconds of the defacing step",
    "seconds_refacing": "seconds of the refacing step",
    "seconds_qc": "seconds of the QC step",
}

#: What each column of ``group_audit.tsv`` holds (``bidsreface.reports.group.AUDIT_COLUMNS``).
AUDIT_COLUMNS = {
    "condition": "which renders probe the gallery of originals (the control, defaced, "
                 "refaced, ...)",
    "probes": "renders probed",
    "faces_detected": "probes on which a face was detected",
    "gallery": "originals in the gallery",
    "mated_pairs": "probe-original pairs of the same person",
    "nonmated_pairs": "probe-original pairs of different people",
    "rank1": "share of probes whose closest original is their own (rank-1 identification)",
    "roc_auc": "area under the ROC of mated against non-mated distances (0.5: chance)",
    "eer": "equal error rate",
    "linkability": "global linkability of mated against non-mated pairs (0: none)",
    "identifiable": "probes identified, of all probes",
}


def code_columns(table: str) -> tuple[str, ...]:
    """The columns the code writes for *table* (``group`` or ``audit``)."""
    if table == "group":
        from bidsreface.reports.tables import COLUMNS

        return COLUMNS
    from bidsreface.reports.group import AUDIT_COLUMNS as columns

    return columns


def undocumented(table: str) -> list[str]:
    """Columns the code writes that :data:`GROUP_COLUMNS` / :data:`AUDIT_COLUMNS` miss."""
    docs = GROUP_COLUMNS if table == "group" else AUDIT_COLUMNS
    return [column for column in code_columns(table) if column not in docs]


class ColumnsDirective(Directive):
    """``.. bidsreface-columns:: group|audit``: a table of the columns and their meaning."""

    required_arguments = 1
    option_spec = {"class": directives.class_option}

    def run(self):
        table = self.arguments[0]
        if table not in ("group", "audit"):
            raise self.error(f"bidsreface-columns: unknown table {table!r} (group or audit)")
        missing = undocumented(table)
        if missing:
            raise self.error(f"bidsreface-columns: {table} columns without a description in "
                             f"docs/_ext/bidsreface_docs.py: {', '.join(missing)}")
        docs = GROUP_COLUMNS if table == "group" else AUDIT_COLUMNS
        rows = [(column, docs[column]) for column in code_columns(table)]
        text = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "",
                "   * - column", "     - meaning"]
        for column, meaning in rows:
            text += [f"   * - ``{column}``", f"     - {meaning}"]
        container = nodes.container()
        self.state.nested_parse(self.content.__class__(text, source="bidsreface-columns"),
                                self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("bidsreface-columns", ColumnsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
