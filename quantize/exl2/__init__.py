"""EXL2 (exllamav2): mixed-precision quantization to a target bits-per-weight; needs a CUDA GPU."""
