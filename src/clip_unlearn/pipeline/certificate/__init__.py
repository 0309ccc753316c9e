"""The erasure certificate: a signed JSON record (record.py), its HTML page from a Jinja2 template
(render.py, templates/) and its per-class figure (figures.py).

    from clip_unlearn.pipeline.certificate import format_table, verify_certificate, write_certificate
"""

from clip_unlearn.pipeline.certificate.figures import plot_per_class
from clip_unlearn.pipeline.certificate.record import canonical_record, verify_certificate, write_certificate
from clip_unlearn.pipeline.certificate.render import format_table, render_html, table_rows

__all__ = ["canonical_record", "format_table", "plot_per_class", "render_html", "table_rows",
           "verify_certificate", "write_certificate"]
