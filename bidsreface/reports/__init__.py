"""HTML reports: one per participant and one for the group (jinja2 templates in data/reports).

Reports are single self-contained files: the reportlets are embedded as ``data:`` URIs and the
plots as inline SVG, so a report opens offline and from a copied folder. They show only
de-identified heads.
"""
