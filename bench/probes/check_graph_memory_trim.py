"""Does core.speed.cuda_graph.release_graph_memory give CUDA's graph memory pool back? (GPU, diagnostic)

    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync python bench/probes/check_graph_memory_trim.py

Captures a small matmul graph twice and frees it, first without and then with the trim, printing the
device memory (cudaMemGetInfo) not returned after each. On an H100 (torch 2.11, CUDA 13) the trimmed
round printed "-96 MiB": it returned the untrimmed round's leftover too.
"""
import torch, sys
sys.path.insert(0, "bench")
import _pack; _pack.load()
from idsculpt.core.speed.cuda_graph import release_graph_memory
print("allocator", torch.cuda.get_allocator_backend())
x = torch.randn(4096, 4096, device="cuda"); torch.cuda.synchronize()
for trim in (False, True):
    free0 = torch.cuda.mem_get_info()[0]
    g = torch.cuda.CUDAGraph(); s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): y = (x @ x).relu() @ x
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g): y = ((x @ x).relu() @ x) * 2
    g.replay(); del g, y; torch.cuda.synchronize(); torch.cuda.empty_cache()
    ok = release_graph_memory() if trim else None
    torch.cuda.empty_cache()
    print("trim" if trim else "no trim", ok, "device memory not returned MiB:", round((free0 - torch.cuda.mem_get_info()[0]) / 2**20))
