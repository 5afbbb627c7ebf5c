"""PyTorch QAT/PTQ quantizers (torch lives only here and in frontend/)."""
