"""flowsr.training."""
