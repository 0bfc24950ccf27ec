"""Speed as a layer (issue 21): how the method's work is run fast, never what it computes.

``cuda_graph`` replays a no-grad network call from a CUDA graph, ``graphed_step`` replays a whole optimisation
step (the caller's closure holds the loss), ``transfer`` copies host tensors to the GPU without a stream sync,
``profiling`` records a few steps under torch.profiler, ``triton_kernel`` switches an optional Triton kernel on where
it runs. A primitive: stages import it; it imports no stage.
"""
