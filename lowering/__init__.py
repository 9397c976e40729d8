"""fxc.lowering: the optimized graph to ONNX (our converter registry) and to TensorRT engines."""
