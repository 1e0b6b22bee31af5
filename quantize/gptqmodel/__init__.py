"""GPTQ and AWQ exporters on GPTQModel; the artifacts load with transformers unchanged."""

from quantize.gptqmodel.format import AWQ, GPTQ

__all__ = ["AWQ", "GPTQ"]
