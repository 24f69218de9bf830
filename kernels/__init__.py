"""flowsr.kernels."""
