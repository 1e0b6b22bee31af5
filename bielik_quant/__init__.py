"""bielik-quant: a Polish LLM from checkpoint to every quantized format, with the numbers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bielik-quant")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
