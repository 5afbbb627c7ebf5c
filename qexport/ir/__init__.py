"""The integer IR: typed integer tensors, one op set, number formats (checker in ``qexport.ir.checker``)."""

from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op

__all__ = ["Graph", "IntType", "Node", "Op", "QuantInfo", "TensorInfo", "Weight"]
