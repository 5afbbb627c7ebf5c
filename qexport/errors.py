"""One exception family for everything the user can get wrong."""


class QExportError(Exception):
    """Base class: the CLI prints the message on one line and exits with code 2."""


class GraphError(QExportError):
    """A malformed integer IR graph (the message names the node or tensor)."""


class LoweringError(QExportError):
    """A torch model that cannot be lowered to the IR."""


class CheckpointError(QExportError):
    """A checkpoint that is missing, corrupt, truncated or foreign."""


class TargetError(QExportError):
    """An unknown or malformed target file."""


class AccumulatorOverflowError(QExportError):
    """An accumulator or requantization result that does not fit its bit width."""
