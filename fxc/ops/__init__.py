"""fxc's fused ops: real ops in the `fxc` torch.library namespace (torch.ops.fxc.*).

Every fused op a pass emits lives here, so the graph stays runnable after every pass
(DESIGN.md decision 2). Each op has:
- a reference implementation: the ATen ops it replaces, registered with
  `torch.library.custom_op("fxc::name", mutates_args=())` (the default kernel, any device);
- a fake implementation (`@op.register_fake`) for shapes and dtypes;
- fast kernels per device where one exists (`@op.register_kernel("cuda")`), e.g. cuDNN's
  fused conv+bias+activation, cuBLASLt's GEMM epilogues;
- an ONNX converter in fxc.lowering.
One module per op family; importing this package registers them all.
"""
from . import conv, linear, norm  # noqa: F401  (fxc::conv2d_act, conv2d_add_act, linear_act, add_layer_norm)
from . import dwconv  # noqa: F401  (fxc::dwconv2d_ln: ConvNeXt's depthwise conv + norm)
from . import fused  # noqa: F401  (fxc::fused_region: generated kernels, fxc/codegen/)
