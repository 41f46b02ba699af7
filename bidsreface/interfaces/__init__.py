"""nipype interfaces: thin wrappers of bidsreface's functions, one per workflow step.

A node runs in a worker process that imports its interface first: importing this package
sends nibabel's header messages there to nipype's log, not the terminal
(:func:`bidsreface.image.route_nibabel_log`).
"""

from ..image import route_nibabel_log

route_nibabel_log()
