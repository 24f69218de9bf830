"""flowsr.export."""
