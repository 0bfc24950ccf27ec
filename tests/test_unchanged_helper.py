"""tests/unchanged.py, the check that a node left the values other nodes gave it as they were, can fail: an
in-place edit, a swapped attribute and an added dict entry are each named by their path."""
from __future__ import annotations

import types

import pytest
import torch

from idsculpt.core.mesh import HeadMesh
from unchanged import assert_unchanged, differences, snapshot


def _value():
    mesh = HeadMesh(torch.rand(4, 3), torch.tensor([[0, 1, 2], [0, 2, 3]]))
    cond = [[torch.rand(1, 2, 3), {"pooled_output": torch.rand(1, 3)}]]
    predictor = types.SimpleNamespace(cuda_graphs=True, calls=0)
    return {"mesh": mesh, "cond": cond, "guidance": types.SimpleNamespace(predictor=predictor)}


def test_an_untouched_value_passes():
    v = _value()
    snap = snapshot(v)
    assert differences(snap, v) == []
    assert_unchanged(snap, v)


def test_edits_are_found_and_named():
    v = _value()
    snap = snapshot(v)
    v["mesh"].vertices.mul_(2)
    v["cond"][0][1]["control"] = object()
    v["guidance"].predictor.cuda_graphs = False
    diff = differences(snap, v)
    assert "value['mesh'].vertices: tensor edited in place" in diff
    assert "value['cond'][0][1]['control']: added" in diff
    assert "value['guidance'].predictor.cuda_graphs: True -> False" in diff
    with pytest.raises(AssertionError, match="changed another node's output"):
        assert_unchanged(snap, v)
