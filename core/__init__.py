"""flowsr.core."""
