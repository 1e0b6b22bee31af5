"""Whether this machine runs EXL2, and the pytest marks that follow from it.

exllamav2 converts and runs models on CUDA only. Tests of the refusal run where EXL2 cannot run;
on a machine with a CUDA device and exllamav2 the real export runs instead. The condition is the
one `quantize.exl2.format.EXL2.missing()` checks, computed here independently of it.
"""

from importlib import util

import pytest


def exl2_runs_here() -> bool:
    import torch

    return torch.cuda.is_available() and util.find_spec("exllamav2") is not None


EXL2_RUNS_HERE = exl2_runs_here()
needs_exl2 = pytest.mark.skipif(
    not EXL2_RUNS_HERE, reason="EXL2 needs a CUDA device and exllamav2 (pip install exllamav2)"
)
without_exl2 = pytest.mark.skipif(
    EXL2_RUNS_HERE, reason="this machine runs EXL2: the real export is tested instead"
)
