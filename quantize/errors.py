"""Typed errors for user mistakes; the CLI turns them into one line and a non-zero exit."""


class QuantizeError(ValueError):
    """Something about the user's input (model, variant, calibration, output) is wrong."""


class ModelSourceError(QuantizeError):
    """The model directory is missing, not a Hugging Face checkpoint, or damaged."""


class UnsupportedArchitectureError(ModelSourceError):
    """The checkpoint's architecture is not one this format can convert."""


class UnknownFormatError(QuantizeError):
    """No exporter is registered under that format name."""


class UnknownVariantError(QuantizeError):
    """The format has no variant of that name."""


class ImatrixError(QuantizeError):
    """An importance matrix is required but missing, or the given file is not a valid one."""


class OutputExistsError(QuantizeError):
    """The artifact directory already exists and overwriting was not asked for."""


class MissingDependencyError(QuantizeError):
    """The format's library (or CUDA) is not available on this machine."""
