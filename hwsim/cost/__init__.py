"""Analytical cost models for hwsim: systolic-array compute cycles, mapping efficiency and memory stalls."""
