"""Compare two GGUF files: tensor names, shapes, ggml types, tensor bytes and metadata.

Prints a JSON report. `gguf_export.py` runs it in a process of its own: reading two multi-GB files
through memory maps would otherwise raise the benchmark process's resident set, which Linux hands
down to every process it starts afterwards as their peak RSS.

    python benchmarks/compare_gguf.py ours.gguf peer.gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _field_value(field_) -> object:
    value = field_.contents()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _short(value: object) -> object:
    if isinstance(value, list):
        return f"<array of {len(value)}>"
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def compare_gguf(ours: Path, peer: Path, with_bytes: bool = True) -> dict[str, object]:
    """Tensor names, shapes, ggml types and (optionally) bytes, and metadata, of two GGUF files."""
    import gguf
    import numpy as np

    reader_a, reader_b = gguf.GGUFReader(ours), gguf.GGUFReader(peer)
    tensors_a = {tensor.name: tensor for tensor in reader_a.tensors}
    tensors_b = {tensor.name: tensor for tensor in reader_b.tensors}
    common = [name for name in tensors_a if name in tensors_b]
    shape_differs, type_differs, bytes_differ = [], [], []
    for name in common:
        a, b = tensors_a[name], tensors_b[name]
        if list(a.shape) != list(b.shape):
            shape_differs.append({"tensor": name, "ours": list(a.shape), "peer": list(b.shape)})
        if a.tensor_type != b.tensor_type:
            type_differs.append(
                {"tensor": name, "ours": a.tensor_type.name, "peer": b.tensor_type.name}
            )
        elif with_bytes and not np.array_equal(
            np.asarray(a.data).view(np.uint8).reshape(-1),
            np.asarray(b.data).view(np.uint8).reshape(-1),
        ):
            bytes_differ.append(name)

    keys_a, keys_b = set(reader_a.fields), set(reader_b.fields)
    value_differs = []
    for key in sorted(keys_a & keys_b):
        value_a, value_b = _field_value(reader_a.fields[key]), _field_value(reader_b.fields[key])
        if value_a != value_b:
            value_differs.append({"key": key, "ours": _short(value_a), "peer": _short(value_b)})

    types: dict[str, int] = {}
    for tensor in reader_b.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    same_layout = not (shape_differs or type_differs) and set(tensors_a) == set(tensors_b)
    return {
        "ours": str(ours),
        "peer": str(peer),
        "file_bytes": {"ours": ours.stat().st_size, "peer": peer.stat().st_size},
        "tensors": {"ours": len(tensors_a), "peer": len(tensors_b)},
        "peer_tensor_types": types,
        "same_names_shapes_types": same_layout,
        "only_in_ours": sorted(set(tensors_a) - set(tensors_b)),
        "only_in_peer": sorted(set(tensors_b) - set(tensors_a)),
        "shape_differs": shape_differs,
        "type_differs": type_differs,
        "bytes_compared": with_bytes,
        "bytes_identical": with_bytes and same_layout and not bytes_differ,
        "tensors_with_different_bytes": bytes_differ,
        "metadata_only_in_ours": {
            key: _short(_field_value(reader_a.fields[key])) for key in sorted(keys_a - keys_b)
        },
        "metadata_only_in_peer": {
            key: _short(_field_value(reader_b.fields[key])) for key in sorted(keys_b - keys_a)
        },
        "metadata_values_differ": value_differs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ours", type=Path)
    parser.add_argument("peer", type=Path)
    parser.add_argument("--no-bytes", action="store_true", help="skip comparing tensor data")
    args = parser.parse_args(argv)
    print(json.dumps(compare_gguf(args.ours, args.peer, not args.no_bytes), indent=1))


if __name__ == "__main__":
    main()
