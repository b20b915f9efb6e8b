"""Export a trained run to the versioned ONNX model repository (imports torch and onnx)."""
