"""The space-to-depth rewrite of few-output convolutions: exact, and only where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nst_deploy.export.graph_opt import space_to_depth_convs, space_to_depth_weights  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.mark.parametrize("k, o, c", [(9, 3, 16), (5, 1, 4), (7, 4, 8)])
def test_the_weights_give_the_same_convolution(k, o, c):
    rng = np.random.default_rng(k)
    w, b = rng.standard_normal((o, c, k, k)).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((2, c, 24 + k - 1, 20 + k - 1)).astype(np.float32))
    want = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b))
    w2, b2 = space_to_depth_weights(w, b)
    assert w2.shape == (4 * o, 4 * c, (k + 2) // 2, (k + 2) // 2)
    s2d = torch.nn.functional.pixel_unshuffle(x, 2)  # channel order (c, r, s): reorder to ONNX's (r, s, c)
    s2d = s2d.reshape(2, c, 4, *s2d.shape[-2:]).transpose(1, 2).reshape(2, 4 * c, *s2d.shape[-2:])
    y2 = torch.nn.functional.conv2d(s2d, torch.from_numpy(w2), torch.from_numpy(b2))
    y2 = y2.reshape(2, 4, o, *y2.shape[-2:]).transpose(1, 2).reshape(2, 4 * o, *y2.shape[-2:])
    got = torch.nn.functional.pixel_shuffle(y2, 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def _graph(half_weights: bool):
    """image -> reflect pad 4 -> conv 3->8 9x9 (3 in: kept) -> relu -> pad 4 -> conv 8->3 9x9 (rewritten)
    -> conv 3->3 stride 2 (kept)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 9, 9)).astype(np.float32) / 10
    w2 = rng.standard_normal((3, 8, 9, 9)).astype(np.float32) / 10
    w3 = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([0, 0, 4, 4, 0, 0, 4, 4], np.int64), "pads"),
             numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(np.ones(3, np.float32), "b2"), numpy_helper.from_array(w3, "w3")]
    nodes = []
    if half_weights:  # as store_exact_fp16 writes them
        inits.append(numpy_helper.from_array(w2.astype(np.float16), "w2__fp16"))
        nodes.append(helper.make_node("Cast", ["w2__fp16"], ["w2"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(w2, "w2"))
    nodes += [helper.make_node("Pad", ["image", "pads"], ["p1"], mode="reflect"),
              helper.make_node("Conv", ["p1", "w1", "b1"], ["c1"], name="first"),
              helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("Pad", ["r1", "pads"], ["p2"], mode="reflect"),
              helper.make_node("Conv", ["p2", "w2", "b2"], ["c2"], name="last"),
              helper.make_node("Conv", ["c2", "w3"], ["out"], strides=[2, 2], name="strided")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, None, None])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, None, None])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("half_weights", [False, True])
def test_the_rewritten_graph_computes_the_same(half_weights):
    model = _graph(half_weights)
    x = np.random.default_rng(1).random((1, 3, 36, 52), dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})[0]
    assert space_to_depth_convs(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("SpaceToDepth") == 1 and ops.count("DepthToSpace") == 1 and ops.count("Conv") == 3
    names = {i.name for i in model.graph.initializer}
    assert "w2" not in names and "w2__fp16" not in names and "Cast" not in ops  # the old weight is gone
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
