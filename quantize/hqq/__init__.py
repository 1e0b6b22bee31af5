"""HQQ exporter on the hqq library: calibration-free, saved and loaded by hqq's own API."""

from quantize.hqq.format import HQQ, VARIANTS, Variant

__all__ = ["HQQ", "VARIANTS", "Variant"]
