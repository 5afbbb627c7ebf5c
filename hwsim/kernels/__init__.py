"""@njit kernels only: arrays and scalars in, arrays out. Flags come from ``hwsim.kernels.config``."""
