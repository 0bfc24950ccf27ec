"""Host-to-GPU copies that do not make the CPU wait for the GPU."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t.to(device, dtype)``, but a CPU tensor goes to a CUDA device through pinned memory, asynchronously.

    A copy from ordinary (pageable) host memory makes PyTorch synchronise the stream: the CPU stops
    until every queued kernel has run. Inside a step whose GPU work is queued ahead (the ISD: VAE
    encode, then the UNet), each such copy of a few numbers cost the wait for the whole queue: three of
    them were 11 ms of an ISD step in a server run on the H100 (docs/PERFORMANCE.md). The pinned staging
    buffer comes from PyTorch's caching host allocator, which keeps it until the copy has run.
    """
    device = torch.device(device)
    if dtype is not None and t.device.type == "cpu":
        t = t.to(dtype)  # on the host: the copy moves the final bytes
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device=device, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True)
