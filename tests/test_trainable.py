"""nodes.common.trainable, the one way a node takes another node's value out of ComfyUI's inference mode:
the copy trains (autograd saves it), equals the original, shares no storage with it, and leaves it unchanged."""
from __future__ import annotations

import pytest
import torch

from idsculpt.core.camera import Cameras
from idsculpt.core.mesh import HeadMesh

pytestmark = pytest.mark.comfy


def test_trainable_copies_inference_values_into_trainable_ones(comfy_inprocess):
    comfy_inprocess.load_pack_nodes()
    from idsculpt.nodes.common import trainable

    with torch.inference_mode():  # what another node hands over inside ComfyUI's execution
        head = HeadMesh(torch.rand(5, 3), torch.tensor([[0, 1, 2], [1, 2, 3]]))
        cams = Cameras.orbit(0.0, [0.0, 90.0], 3.0, 30.0, 16)
        value = {"head": head, "cams": cams, "list": [torch.ones(2)], "note": "kept"}
    assert head.vertices.is_inference()
    with torch.inference_mode():  # trainable() works from inside the node's own inference mode
        copy = trainable(value)
    v = copy["head"].vertices
    assert not v.is_inference() and v.data_ptr() != head.vertices.data_ptr()
    assert torch.equal(v, head.vertices) and torch.equal(copy["head"].faces, head.faces)
    assert torch.equal(copy["cams"].cam2world, cams.cam2world) and copy["note"] == "kept"
    with torch.enable_grad():  # autograd can save the copy (it refuses the inference original)
        p = v.requires_grad_(True)
        (p * p).sum().backward()
        assert torch.equal(p.grad, 2 * head.vertices)
        with pytest.raises(RuntimeError, match="[Ii]nference"):
            q = torch.zeros(5, 3, requires_grad=True)
            (q * head.vertices).sum().backward()
    assert not head.vertices.requires_grad  # the original is untouched


def test_trainable_module_loads_into_a_fresh_instance(comfy_inprocess):
    comfy_inprocess.load_pack_nodes()
    from idsculpt.nodes.common import trainable

    with torch.inference_mode():
        src = torch.nn.Linear(3, 2)
    fresh = torch.nn.Linear(3, 2)
    out = trainable(src, into=fresh)
    assert out is fresh and torch.equal(out.weight, src.weight) and not out.weight.is_inference()
    out.weight.sum().backward()
    assert out.weight.grad is not None
    with pytest.raises(ValueError, match="fresh module"):
        trainable(src)
