"""bielik-quant's own Polish-English corpus and the one function that loads any text set."""

from calibration_data.errors import CalibrationError
from calibration_data.loader import BUILTIN, Calibration, Document, load, load_records
from calibration_data.manifest import DOMAINS, LANGUAGES, count_words

__all__ = [
    "BUILTIN",
    "DOMAINS",
    "LANGUAGES",
    "Calibration",
    "CalibrationError",
    "Document",
    "count_words",
    "load",
    "load_records",
]
