"""qexport: lower quantization-aware-trained PyTorch models to an integer IR and export it."""

__version__ = "0.1.0"
