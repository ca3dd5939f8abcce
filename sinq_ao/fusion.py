"""One GEMV launch for the linears that share their input: a layer's q, k and v projections, its gate and up.

At decode (one or two activation rows) each projection is a short, memory-bound kernel whose start and tail cost
about as much as its reads; one launch over all of a layer's q/k/v rows (or gate/up rows) streams the same bytes
with fewer of both. Under ``torch.compile`` a pre-grad graph pass (:func:`group_projections`, installed in
Inductor's ``pre_grad_custom_pass`` by :func:`enable_projection_fusion`, which ``import sinq_ao`` calls unless the
environment sets ``SINQ_AO_FUSE_PROJECTIONS=0``) replaces bias-free ``F.linear`` calls on one input with
untransposed SINQ weights of one format by one :func:`grouped_linear` call. It runs the grouped kernel
(``torch.ops.sinq_ao.linear_group``) where the kernels take the product (CUDA, at most GEMV_MAX_M rows, same
strides) and the separate linears otherwise, so the rewritten graph computes what the original did. Eager code is
not rewritten; call :func:`grouped_linear` directly there.
"""

from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass

from . import kernels
from .tensor import SINQTensor

_LINEARS = (F.linear, torch._C._nn.linear)


def grouped_linear(x: torch.Tensor, *weights: SINQTensor) -> tuple[torch.Tensor, ...]:
    """``tuple(F.linear(x, w) for w in weights)``, in one grouped GEMV launch where the kernels take it."""
    if not _kernel_groups(x, weights):
        return tuple(F.linear(x, w) for w in weights)
    first = weights[0]
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    outputs = torch.ops.sinq_ao.linear_group(
        x2d, [w.qdata for w in weights], [w.scale for w in weights], [w.zero_point for w in weights],
        [w.act_pre_scale.to(x.dtype) for w in weights], first.bits, first.group_size,
    )  # fmt: skip
    return tuple(y.reshape(*x.shape[:-1], y.shape[-1]) for y in outputs)


def _format(weight: SINQTensor) -> tuple:
    return (weight.bits, weight.group_size, weight.scheme, weight.tiling, weight.in_features, weight.dtype)


def _kernel_groups(x: torch.Tensor, weights: tuple[SINQTensor, ...]) -> bool:
    """Whether the grouped kernel takes x and these weights (else the separate linears run)."""
    first = weights[0]
    if any(not isinstance(w, SINQTensor) or w.transposed or _format(w) != _format(first) for w in weights):
        return False
    if x.shape[-1] != first.in_features or not kernels.kernel_supports(
        x, first.bits, first.group_size, first.tiling, first.scheme
    ):
        return False
    parts = [(w.qdata, w.scale, w.zero_point, w.act_pre_scale) for w in weights]
    return kernels.group_supported(x.reshape(-1, x.shape[-1]), parts)


_INPLACE_OPERATORS = {"setitem", "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior",
                      "ixor", "ilshift", "irshift", "imatmul"}  # fmt: skip


def _may_mutate_inputs(node: torch.fx.Node) -> bool:
    """Whether a node of the (not functionalized) pre-grad graph may write to its inputs: in-place methods and
    functions (``add_``, ``x[i] = v``, ``x += y``), ``out=`` arguments, submodule calls."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    inplace = (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_OPERATORS
    return node.op == "call_module" or "out" in node.kwargs or (node.op in ("call_method", "call_function") and inplace)


def group_projections(graph: torch.fx.Graph) -> None:
    """Replace bias-free ``F.linear`` nodes that share their input and have untransposed SINQ weights of one format
    by :func:`grouped_linear` nodes (up to GROUP_MAX linears each, in graph order) plus ``getitem`` nodes. A node
    that may write to the shared input ends the run of linears before it (the grouped call runs at the first); a
    write through a view of the input, between two of the linears, is not seen (transformers' Llama has none)."""
    runs: dict[tuple, list[torch.fx.Node]] = {}
    closed: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = []
    for node in graph.nodes:
        if _may_mutate_inputs(node):
            for key in [key for key in runs if key[0] in node.all_input_nodes]:
                closed.append((key[0], runs.pop(key)))
        if node.op != "call_function" or node.target not in _LINEARS or node.kwargs:
            continue
        x, weight, *rest = node.args
        value = weight.meta.get("example_value") if isinstance(weight, torch.fx.Node) else None
        if any(r is not None for r in rest) or not isinstance(value, SINQTensor) or value.transposed:
            continue
        runs.setdefault((x, _format(value)), []).append(node)
    closed += [(key[0], nodes) for key, nodes in runs.items()]
    for x, nodes in closed:
        for start in range(0, len(nodes) - 1, kernels.GROUP_MAX):
            chunk = nodes[start : start + kernels.GROUP_MAX]
            if len(chunk) > 1:
                _replace(graph, x, chunk)


def _replace(graph: torch.fx.Graph, x: torch.fx.Node, chunk: list[torch.fx.Node]) -> None:
    weights = [node.args[1] for node in chunk]
    for weight in weights:  # a get_attr weight may be defined after the first linear: move it up (no inputs)
        if weight.op == "get_attr":
            chunk[0].prepend(weight)
    with graph.inserting_before(chunk[0]):
        grouped = graph.call_function(grouped_linear, (x, *weights))
        grouped.meta["example_value"] = tuple(node.meta.get("example_value") for node in chunk)
        for i, node in enumerate(chunk):
            item = graph.call_function(operator.getitem, (grouped, i))
            item.meta.update(node.meta)
            node.replace_all_uses_with(item)
    for node in chunk:
        graph.erase_node(node)


class ProjectionFusion(CustomGraphPass):
    """:func:`group_projections` as an Inductor custom pass (its ``uuid`` lets Inductor cache compiled graphs)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        group_projections(graph)

    def uuid(self) -> bytes:
        return hashlib.sha256(Path(__file__).read_bytes()).digest()


class _Both(CustomGraphPass):
    """A user's pre-grad pass followed by ours (Inductor holds one)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.first(graph)
        self.second(graph)

    def uuid(self):
        first = self.first.uuid() if hasattr(self.first, "uuid") else None
        return None if first is None else hashlib.sha256(repr((first, self.second.uuid())).encode()).digest()


PASS = ProjectionFusion()


def _installed(current) -> bool:
    return current is PASS or (isinstance(current, _Both) and current.second is PASS)


def enable_projection_fusion() -> None:
    """Install :func:`group_projections` in ``torch._inductor.config.pre_grad_custom_pass`` (after a pass already
    there); graphs compiled from then on group their SINQ projections. Idempotent."""
    config = torch._inductor.config
    current = config.pre_grad_custom_pass
    if not _installed(current):
        config.pre_grad_custom_pass = PASS if current is None else _Both(current, PASS)


def disable_projection_fusion() -> None:
    """Remove the pass that :func:`enable_projection_fusion` installed (a user's own pass stays)."""
    config = torch._inductor.config
    current = config.pre_grad_custom_pass
    if current is PASS:
        config.pre_grad_custom_pass = None
    elif isinstance(current, _Both) and current.second is PASS:
        config.pre_grad_custom_pass = current.first


def enable_from_environment() -> None:
    """What ``import sinq_ao`` does: enable the fusion unless ``SINQ_AO_FUSE_PROJECTIONS=0``."""
    if os.environ.get("SINQ_AO_FUSE_PROJECTIONS", "1") != "0":
        enable_projection_fusion()
