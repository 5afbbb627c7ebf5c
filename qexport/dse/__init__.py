"""Design-space exploration: quantization choices x hardware points, swept on Dask (``qexport-dse``).

from qexport.dse import load_space, run_sweep, dask_client, ResultStore
"""

from qexport.dse.space import HardwarePoint, Space, TrialConfig, load_space
from qexport.dse.store import ResultStore
from qexport.dse.sweep import SweepResult, dask_client, run_sweep

__all__ = [
    "HardwarePoint",
    "ResultStore",
    "Space",
    "SweepResult",
    "TrialConfig",
    "dask_client",
    "load_space",
    "run_sweep",
]
