"""The one exception type the calibration package raises for bad input."""


class CalibrationError(ValueError):
    """A calibration source cannot be used: the message names the problem and the fix."""
