"""Exact rewrites of an exported ONNX graph that make ONNX Runtime faster on the CPU (each measured in
``docs/performance.md``).

:func:`space_to_depth_convs`: a convolution with few output channels (the network's last, 16 -> 3
channels with a 9x9 kernel at full resolution) wastes most of ONNX Runtime's blocked (NCHWc) kernel,
whose output channels come in blocks of 8 or 16: 3 of 16 lanes do work. Written on the 2x2
space-to-depth of its input instead, it is a convolution with 4x the channels on each side at half the
resolution with a ``ceil((k+1)/2)`` kernel, followed by a depth-to-space: the same sums in another order
(max difference ~1e-6), and 1.16-1.19x faster for the whole network at 512-1024 px on the 2-core
development machine. Output ``(p, q, o)`` of the new convolution (sub-pixel ``p, q``, channel ``o``)
and input ``(r, s, c)`` take the weight ``w[o, c, 2U + r - p, 2V + s - q]`` at tap ``(U, V)`` (zero
outside the kernel), which is ONNX's ``SpaceToDepth`` / ``DepthToSpace`` (``DCR``) channel order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_OUT_CHANNELS", "space_to_depth_convs", "space_to_depth_weights"]

#: Convolutions with at most this many output channels are rewritten (the first layer, 3 input
#: channels, was measured slower rewritten).
MAX_OUT_CHANNELS = 4
#: ... and kernels at least this large (smaller ones gain nothing from the reordering).
MIN_KERNEL = 5


def space_to_depth_weights(w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The weights ``(4*O, 4*C, K, K)`` (``K = (k + 2) // 2``) and bias of the space-to-depth form of a stride-1
    convolution with weights ``(O, C, k, k)``."""
    o, c, k, _ = w.shape
    kk = (k + 2) // 2
    w2 = np.zeros((4 * o, 4 * c, kk, kk), w.dtype)
    for p in range(2):
        for q in range(2):
            for r in range(2):
                for s in range(2):
                    for u2 in range(kk):
                        u = 2 * u2 + r - p
                        if not 0 <= u < k:
                            continue
                        for v2 in range(kk):
                            v = 2 * v2 + s - q
                            if 0 <= v < k:
                                w2[(2 * p + q) * o:(2 * p + q + 1) * o, (2 * r + s) * c:(2 * r + s + 1) * c, u2, v2] = \
                                    w[:, :, u, v]
    return w2, None if b is None else np.tile(b, 4)


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def space_to_depth_convs(model) -> int:
    """Rewrite, in place, the stride-1, undilated, unpadded, ungrouped convolutions of ``model`` with square
    kernels of ``MIN_KERNEL`` or more, odd, and at most ``MAX_OUT_CHANNELS`` outputs whose weights are
    initializers (or float16 initializers cast to float32, as :func:`~nst_deploy.export.core.store_exact_fp16`
    writes them). Their inputs must have even height and width (a network that pads its input to a multiple
    of 2 and pads by ``k - 1`` before such a convolution); the export's verification runs the result.
    Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    casts = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}

    def array(name: str) -> np.ndarray | None:
        """An initializer as an array of the type the graph computes in (a cast one: float32)."""
        if name in inits:
            return numpy_helper.to_array(inits[name])
        src = inits.get(casts.get(name, ""))
        return None if src is None else numpy_helper.to_array(src).astype(np.float32)

    out, done = [], 0
    for node in graph.node:
        w = array(node.input[1]) if node.op_type == "Conv" and len(node.input) >= 2 else None
        ok = (w is not None and w.ndim == 4 and w.shape[2] == w.shape[3] and w.shape[2] >= MIN_KERNEL
              and w.shape[2] % 2 == 1 and w.shape[0] <= MAX_OUT_CHANNELS and _attr(node, "group", 1) == 1
              and all(v == 1 for v in _attr(node, "strides", [1, 1]))
              and all(v == 1 for v in _attr(node, "dilations", [1, 1]))
              and not any(_attr(node, "pads", [0, 0, 0, 0]))
              and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
        b = array(node.input[2]) if ok and len(node.input) > 2 and node.input[2] else None
        if not ok or (len(node.input) > 2 and node.input[2] and b is None):
            out.append(node)
            continue
        w2, b2 = space_to_depth_weights(w, b)
        base = node.name or node.output[0]
        graph.initializer.append(numpy_helper.from_array(w2, f"{base}__s2d_w"))
        inputs = [f"{base}__s2d_in", f"{base}__s2d_w"]
        if b2 is not None:
            graph.initializer.append(numpy_helper.from_array(b2, f"{base}__s2d_b"))
            inputs.append(f"{base}__s2d_b")
        k2 = w2.shape[2]
        out += [helper.make_node("SpaceToDepth", [node.input[0]], [inputs[0]], blocksize=2, name=f"{base}__s2d"),
                helper.make_node("Conv", inputs, [f"{base}__s2d_out"], kernel_shape=[k2, k2], pads=[0, 0, 0, 0],
                                 name=f"{base}__s2d_conv"),
                helper.make_node("DepthToSpace", [f"{base}__s2d_out"], list(node.output), blocksize=2, mode="DCR",
                                 name=f"{base}__d2s")]
        done += 1
    if done:
        # the old weights go, and the Casts that fed them
        live = {i for n in out for i in n.input} | {o.name for o in graph.output}
        out = [n for n in out if n.op_type != "Cast" or n.output[0] in live]
        del graph.node[:]
        graph.node.extend(out)
        used = {i for n in out for i in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return done
