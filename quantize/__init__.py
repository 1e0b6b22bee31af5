"""Quantization: the format registry, one exporter per format, the importance matrix, artifacts."""
