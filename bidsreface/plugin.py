"""A MultiProc scheduler that finishes images in order.

nipype's MultiProc submits the ready jobs in the order of one topological sort of the whole
graph, which runs every image's first step, then every image's second step...: every image
is finished only when all are nearly done. :class:`ImageOrderPlugin` submits the ready job of
the earliest image first (depth first, by image order), so that images finish one after the
other, their outputs are written as each is done and the progress lines come steadily.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from nipype.pipeline.plugins.multiproc import MultiProcPlugin


def effective_ranks(nodes: Sequence[Hashable], successors: Callable, rank: Callable) -> list:
    """Each node's rank: the lowest of its own and its descendants' (*nodes* in topological
    order; ``rank(node)`` is a number, or None for a node of no image).

    A step that a lower-ranked image waits for (a T1w's registration that its session's T2w
    follows) takes that image's rank. A node with no rank of its own nor below it gets 0
    (it runs as soon as it is ready).

    >>> edges = {"reg_b": ["mask_a", "mask_b"], "mask_a": [], "mask_b": [], "setup": ["reg_b"]}
    >>> effective_ranks(["setup", "reg_b", "mask_a", "mask_b"], edges.__getitem__,
    ...                 {"reg_b": 1, "mask_a": 0, "mask_b": 1}.get)
    [0, 0, 0, 1]
    """
    index = {node: i for i, node in enumerate(nodes)}
    ranks = [rank(node) for node in nodes]
    for i in reversed(range(len(nodes))):
        below = [ranks[index[succ]] for succ in successors(nodes[i])]
        known = [r for r in [ranks[i], *below] if r is not None]
        ranks[i] = min(known) if known else None
    return [0 if r is None else r for r in ranks]


class ImageOrderPlugin(MultiProcPlugin):
    """MultiProc that submits the ready jobs by image order, then in nipype's order.

    ``plugin_args`` are MultiProc's, plus ``rank``: a callable that gives a node's image
    order (a number; None for a node of no image).
    """

    def __init__(self, plugin_args=None):
        args = dict(plugin_args or {})
        self._rank = args.pop("rank", lambda node: None)
        super().__init__(plugin_args=args)
        self._ranks: list = []

    def _generate_dependency_list(self, graph):
        super()._generate_dependency_list(graph)
        self._ranks = effective_ranks(self.procs, graph.successors, self._rank)

    def _sort_jobs(self, jobids, scheduler="tsort"):
        # a MapNode's subnodes are appended to the job list later: they take no rank (0)
        return sorted(jobids, key=lambda j: (self._ranks[j] if j < len(self._ranks) else 0, j))
