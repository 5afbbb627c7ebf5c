"""The slow, obvious numpy executor of the IR: the oracle for every other path."""

from qexport.reference.executor import dequantize_output, quantize_input, run_float, run_graph, run_node

__all__ = ["dequantize_output", "quantize_input", "run_float", "run_graph", "run_node"]
