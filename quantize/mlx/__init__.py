"""MLX (mlx-lm): affine 2 to 8 bit and mixed-precision quantization for Apple silicon.

The package is `quantize.mlx`; every module in it imports Apple's library absolutely (`import
mlx.core`), which Python 3 resolves to the top-level `mlx` package, never to this one.
"""
