"""Window mode without redoing per-frame work: a step model cut into its frame part and
its recurrent part.

In window mode every frame is part of T windows, and each window runs T steps from zero
state. The nodes of a step that do not depend on any state input (for a ConvLSTM-U-Net
with its ConvLSTM at the bottleneck: the whole encoder, and the ConvLSTM's input
convolution) compute the same thing for a frame in every window it belongs to. So the
step graph is cut in three, by the nodes' dependence on the states and on the image
(structure, not names: it works for foreign step models too; nodes that read neither,
such as constants, are copied into every part that needs them):

``frame part``
    The nodes that depend on no state input. Run once per frame; its outputs are the
    tensors the other parts read from it (the *boundary*).
``state part``
    The state-dependent nodes the new states need (for a bottleneck ConvLSTM: the
    recurrent convolution and the gates, not the decoder). Run for the T-1 earlier
    frames of a window, on their stored boundary tensors.
``full part``
    Every state-dependent node: the prediction and the new states of the window's last
    frame, on that frame's boundary.

A window then costs one full step plus T-1 state steps, instead of T full steps. The
parts compute what the step graph computes, node for node (ONNX Runtime may fuse them
differently, so results agree to float rounding, not bit for bit, with the unsplit model).

Needs the ``onnx`` package (``unetrt[train]`` or ``[test]``) to write the parts; without
it, or when a boundary tensor is not a 4-D float32 tensor the backends can carry, the
split is not made and window mode runs T full steps.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .contract import StateSpec


@dataclass(frozen=True)
class StepSplit:
    """The three parts of a step model (serialized ONNX) and what flows between them.

    Attributes:
        frame_part: Input: the image input. Outputs: `boundary_full` (but the image).
        state_part: Inputs: `boundary_state` and the state inputs. Outputs: the states.
        full_part: Inputs: `boundary_full` and the state inputs. Outputs: the prediction
            and the states.
        boundary_state: Frame-part tensors the state part reads (kept per frame).
        boundary_full: Frame-part tensors the full part reads.
    """

    frame_part: bytes
    state_part: bytes
    full_part: bytes
    boundary_state: tuple[str, ...]
    boundary_full: tuple[str, ...]


def split_step_model(
    model: str | os.PathLike[str] | bytes,
    image: str,
    prediction: str,
    states: Iterable[StateSpec],
) -> StepSplit | None:
    """Cut a step model into its frame, state and full parts (see the module docstring).

    Args:
        model: The ONNX step model (file or bytes).
        image: Its image input.
        prediction: Its prediction output.
        states: Its states.

    Returns:
        The parts, or None when they cannot be made: no ``onnx`` package, no frame-only
        work to share, or a boundary tensor that is not 4-D float32.
    """
    if importlib.util.find_spec("onnx") is None:
        return None
    import onnx
    from onnx import helper, shape_inference

    states = list(states)
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    graph = proto.graph
    nodes = list(graph.node)  # ONNX nodes are topologically sorted
    on_states = _downstream(nodes, {s.input for s in states})
    on_image = _downstream(nodes, {image})
    recurrent = [n for n in nodes if on_states.intersection(n.output)]
    per_frame = [n for n in nodes if on_image.intersection(n.output) and n not in recurrent]
    # Nodes that read neither (constants, shapes of weights) go into every part needing them.
    fixed = [n for n in nodes if not (on_states | on_image).intersection(n.output)]
    made_per_frame = {image} | {out for n in per_frame for out in n.output}

    def needed(among: list[Any], outputs: Iterable[str]) -> list[Any]:
        """The nodes of `among` that `outputs` are computed with, in graph order."""
        allowed = {id(n) for n in among}
        wanted, kept = set(outputs), []
        for node in reversed(nodes):
            if id(node) in allowed and wanted.intersection(node.output):
                kept.append(node)
                wanted.update(node.input)
        return kept[::-1]

    state_outputs = [s.output for s in states]
    outputs = [prediction, *state_outputs]
    if prediction not in on_states:
        return None  # a prediction that ignores the states: nothing recurrent to share
    state_nodes = needed(recurrent + fixed, state_outputs)
    full_nodes = needed(recurrent + fixed, outputs)
    boundary_state = _reads(state_nodes, made_per_frame)
    boundary_full = _reads(full_nodes, made_per_frame)
    if not boundary_state or boundary_state == [image]:
        return None  # nothing per frame to share
    frame_nodes = needed(per_frame + fixed, boundary_full)

    inferred = shape_inference.infer_shapes(proto)
    infos = {
        v.name: v
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    for name in boundary_full:
        info = infos.get(name)
        tensor = info.type.tensor_type if info is not None else None
        if (
            tensor is None
            or tensor.elem_type != onnx.TensorProto.FLOAT
            or not tensor.HasField("shape")
            or len(tensor.shape.dim) != 4
        ):
            return None

    def part(nodes: list[Any], inputs: list[str], outs: list[str], name: str) -> bytes:
        used = {i for node in nodes for i in node.input}
        sub = helper.make_graph(
            nodes,
            name,
            [infos[i] for i in inputs],
            [infos[o] for o in outs],
            initializer=[t for t in graph.initializer if t.name in used],
        )
        made = helper.make_model(sub, opset_imports=proto.opset_import)
        made.ir_version = proto.ir_version
        return bytes(made.SerializeToString())

    state_ins = [s.input for s in states]
    made = [b for b in boundary_full if b != image]  # the image itself is fed as it is
    return StepSplit(
        frame_part=part(frame_nodes, [image], made, "frame_part"),
        state_part=part(
            state_nodes, [*boundary_state, *state_ins], [s.output for s in states], "state_part"
        ),
        full_part=part(full_nodes, [*boundary_full, *state_ins], outputs, "full_part"),
        boundary_state=tuple(boundary_state),
        boundary_full=tuple(boundary_full),
    )


def _downstream(nodes: list[Any], sources: set[str]) -> set[str]:
    """The tensors computed from any of `sources` (and the sources)."""
    reached = set(sources)
    for node in nodes:
        if reached.intersection(node.input):
            reached.update(node.output)
    return reached


def _reads(nodes: list[Any], available: set[str]) -> list[str]:
    """The tensors of `available` that `nodes` read, in first-use order."""
    seen: dict[str, None] = {}
    for node in nodes:
        for name in node.input:
            if name in available:
                seen.setdefault(name)
    return list(seen)
