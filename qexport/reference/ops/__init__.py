"""One op, one small numpy file (the ONNX reference evaluator's layout)."""
