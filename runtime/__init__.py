"""flowsr.runtime."""
