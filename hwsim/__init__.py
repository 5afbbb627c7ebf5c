"""hwsim: bit-accurate simulation of the integer IR on shift-and-LUT MAC arrays, with cost reports."""
