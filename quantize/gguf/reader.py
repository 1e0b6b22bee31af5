"""Open a GGUF file with gguf-py, refusing a damaged or truncated one with a typed error."""

from __future__ import annotations

from pathlib import Path

import gguf


def read_gguf(path: Path, error: type[Exception], *, padded: bool = False) -> gguf.GGUFReader:
    """gguf-py's reader for `path`, or `error` saying why the file cannot be used.

    gguf-py's memory map does not notice a file cut inside the tensor data, so the data's end is
    checked here. llama.cpp's model loader needs each tensor's bytes within the file; ggml's full
    read (how llama-quantize loads an imatrix) also reads the padding after the last tensor, which
    `padded=True` requires too.
    """
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:
        # GGUFReader fails with assorted ValueError/IndexError/struct errors on a damaged file.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"{path} is not a readable GGUF file ({reason})") from err
    align = reader.alignment if padded else 1
    data_end = max((t.data_offset + _padded(t.n_bytes, align) for t in reader.tensors), default=0)
    size = Path(path).stat().st_size
    if size < data_end:
        raise error(f"{path} is truncated: {size} bytes, need {data_end}")
    return reader


def _padded(n_bytes: int, alignment: int) -> int:
    return (n_bytes + alignment - 1) // alignment * alignment
