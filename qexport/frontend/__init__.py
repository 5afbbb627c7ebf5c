"""torch.fx front end: prepare a float model for QAT, lower a trained one to the IR."""
