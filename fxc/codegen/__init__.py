"""Generated kernels: fxc's own fused kernels for what no library pattern takes (DESIGN.md
decision 10, second kind of fusion).

    passes/fuse_regions.py   finds regions of pointwise ops and trailing-dim reductions
    registry.py              the op table: ATen overload -> Triton expression / reduction
    region.py                a region as data: its ATen program, its key (the program as
                             canonical JSON text, so any process can rebuild it), its meta
    triton_gen.py            the region's program -> readable Triton source text
    cache.py                 source -> triton.jit kernel, cached by structure; launch
    fxc/ops/fused.py         fxc::fused_region(Tensor[] inputs, str key) -> Tensor[]
"""
