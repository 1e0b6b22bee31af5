"""Importance matrices: windowing, what is collected, the numbers, and the llama.cpp file layout."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from calibration_data import load
from quantize.errors import ImatrixError, QuantizeError
from quantize.imatrix import ImportanceMatrix, compute_imatrix, load_imatrix, save_imatrix
from quantize.windows import token_windows, tokenize_for_windows

N_CTX = 32
N_WINDOWS = 2
N_BLOCKS = 4
BLOCK_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# --- windows -------------------------------------------------------------------------------------


def test_windows_are_consecutive_full_length_and_drop_the_tail() -> None:
    ids = list(range(100, 111))  # 11 tokens
    assert token_windows(ids, 4, bos_id=None) == [[100, 101, 102, 103], [104, 105, 106, 107]]


def test_bos_replaces_the_first_token_of_every_window() -> None:
    # llama.cpp overwrites tokens[chunk_start] with BOS; it does not prepend (length stays n_ctx).
    windows = token_windows(list(range(100, 109)), 3, bos_id=1)
    assert windows == [[1, 101, 102], [1, 104, 105], [1, 107, 108]]


def test_exactly_one_window() -> None:
    assert token_windows([5, 6, 7], 3, bos_id=1) == [[1, 6, 7]]


def test_too_few_tokens_for_one_window() -> None:
    with pytest.raises(QuantizeError, match=r"has 7 tokens.*needs at least 8"):
        token_windows(list(range(7)), 8, bos_id=1)


def test_windows_do_not_alias_the_input() -> None:
    ids = [9, 9, 9, 9]
    token_windows(ids, 2, bos_id=1)
    assert ids == [9, 9, 9, 9]


# --- fixtures on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib_texts() -> list[str]:
    return load("pl-en", split="calib").texts[:4]


@pytest.fixture(scope="module")
def progress() -> list[tuple[int, int]]:
    return []


@pytest.fixture(scope="module")
def small_imatrix(
    tiny_model: Path, calib_texts: list[str], progress: list[tuple[int, int]]
) -> ImportanceMatrix:
    return compute_imatrix(
        tiny_model,
        calib_texts,
        n_ctx=N_CTX,
        max_windows=N_WINDOWS,
        on_window=lambda done, total: progress.append((done, total)),
        dataset_name="pl-en:calib",
    )


def test_tokenize_joins_documents_with_a_blank_line_after_one_bos(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenize_for_windows(tokenizer, ["Ala ma kota.", "The cat sat."])
    expected = tokenizer("Ala ma kota.\n\nThe cat sat.", add_special_tokens=False)["input_ids"]
    # As llama.cpp tokenizes its input file: BOS once at the start, no EOS.
    assert ids == [tokenizer.bos_token_id, *expected]


# --- what is collected ---------------------------------------------------------------------------


def test_one_entry_per_block_matrix_and_no_lm_head(small_imatrix: ImportanceMatrix) -> None:
    # llama-imatrix collects every `blk.*` matmul; output.weight only with --process-output.
    expected = {f"blk.{b}.{m}.weight" for b in range(N_BLOCKS) for m in BLOCK_MATRICES}
    assert set(small_imatrix.sums) == expected
    assert set(small_imatrix.counts) == expected
    for name, sums in small_imatrix.sums.items():
        assert sums.dtype == np.float32
        assert sums.shape == ((768,) if "ffn_down" in name else (256,))
        assert small_imatrix.counts[name] == N_WINDOWS * N_CTX
        assert np.all(sums > 0)


def test_metadata_and_progress(
    small_imatrix: ImportanceMatrix, progress: list[tuple[int, int]]
) -> None:
    assert small_imatrix.chunk_count == N_WINDOWS
    assert small_imatrix.chunk_size == N_CTX
    assert small_imatrix.datasets == ["pl-en:calib"]
    assert progress == [(1, N_WINDOWS), (2, N_WINDOWS)]


def test_empty_texts_are_refused(tiny_model: Path) -> None:
    with pytest.raises(QuantizeError, match="empty"):
        compute_imatrix(tiny_model, [])
    with pytest.raises(QuantizeError, match="empty"):
        compute_imatrix(tiny_model, ["", "  \n"])


def test_too_little_text_is_refused(tiny_model: Path) -> None:
    with pytest.raises(QuantizeError, match="tokens"):
        compute_imatrix(tiny_model, ["Krótko."], n_ctx=512)


# --- the numbers, recomputed without hooks -------------------------------------------------------


def _rotate_half(x: Any) -> Any:
    import torch

    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _attention(layer: Any, config: Any, x: Any) -> Any:
    """Causal GQA attention with RoPE, from the layer's projections and SDPA: o_proj's input."""
    import torch
    import torch.nn.functional as F

    attn = layer.self_attn
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    t = x.shape[1]

    def heads(proj: Any, n: int) -> Any:
        return proj(x).view(1, t, n, head_dim).transpose(1, 2)

    q, k, v = heads(attn.q_proj, n_heads), heads(attn.k_proj, n_kv), heads(attn.v_proj, n_kv)
    theta = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(n_heads // n_kv, dim=1)
    v = v.repeat_interleave(n_heads // n_kv, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(1, t, n_heads * head_dim)


def test_sums_match_a_hook_free_recomputation(
    tiny_model: Path, calib_texts: list[str], small_imatrix: ImportanceMatrix
) -> None:
    """Rebuild every matmul input from hidden states, norms and our own attention.

    Each layer's rebuilt output (attention residual + MLP residual) must equal the model's next
    hidden state, which checks the attention recomputation end to end before its inputs are used.
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    config = model.config
    assert config.hidden_act == "silu"
    ids = tokenizer("\n\n".join(calib_texts), add_special_tokens=True)["input_ids"]

    expected: dict[str, Any] = {}

    def add(name: str, x: Any) -> None:
        sq = x.double().reshape(-1, x.shape[-1]).square().sum(0)
        expected[name] = expected.get(name, 0) + sq

    with torch.inference_mode():
        for w in range(N_WINDOWS):
            window = [tokenizer.bos_token_id, *ids[w * N_CTX + 1 : (w + 1) * N_CTX]]
            out = model(input_ids=torch.tensor([window]), output_hidden_states=True)
            hidden = out.hidden_states
            for b, layer in enumerate(model.model.layers):
                x = layer.input_layernorm(hidden[b])
                for m in ("attn_q", "attn_k", "attn_v"):
                    add(f"blk.{b}.{m}.weight", x)
                attn = _attention(layer, config, x)
                add(f"blk.{b}.attn_output.weight", attn)
                mid = hidden[b] + layer.self_attn.o_proj(attn)
                y = layer.post_attention_layernorm(mid)
                add(f"blk.{b}.ffn_gate.weight", y)
                add(f"blk.{b}.ffn_up.weight", y)
                act = F.silu(layer.mlp.gate_proj(y)) * layer.mlp.up_proj(y)
                add(f"blk.{b}.ffn_down.weight", act)
                if b + 1 < len(model.model.layers):  # the last entry is after the final norm
                    rebuilt = mid + layer.mlp.down_proj(act)
                    torch.testing.assert_close(rebuilt, hidden[b + 1], rtol=1e-4, atol=1e-4)

    assert set(expected) == set(small_imatrix.sums)
    for name, sums in expected.items():
        np.testing.assert_allclose(small_imatrix.sums[name], sums.numpy(), rtol=1e-4, err_msg=name)
        assert small_imatrix.counts[name] == N_WINDOWS * N_CTX


# --- values, hashing, files ----------------------------------------------------------------------


def _synthetic() -> ImportanceMatrix:
    return ImportanceMatrix(
        sums={
            "blk.0.attn_q.weight": np.array([0.0, 3.0, 7.5, 1e-3], dtype=np.float32),
            "blk.1.ffn_down.weight": np.array([2.0, 4.0], dtype=np.float32),
        },
        counts={"blk.0.attn_q.weight": 3, "blk.1.ffn_down.weight": 0},
        chunk_count=1,
        chunk_size=3,
        datasets=["a.txt"],
    )


def test_values_are_sums_over_counts_in_float32_with_ones_for_no_data() -> None:
    # quantize.cpp: e[i] = in_sum2[i] / (float) count, or 1 for every column when count is 0.
    values = _synthetic().values()
    q = values["blk.0.attn_q.weight"]
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, np.array([0.0, 3.0, 7.5, 1e-3], np.float32) / np.float32(3))
    np.testing.assert_array_equal(values["blk.1.ffn_down.weight"], np.ones(2, np.float32))


def test_sha256_ignores_dict_order_and_sees_every_number() -> None:
    a = _synthetic()
    b = _synthetic()
    b.sums = dict(reversed(b.sums.items()))
    b.counts = dict(reversed(b.counts.items()))
    assert a.sha256() == b.sha256()
    b.sums["blk.1.ffn_down.weight"] = np.array([2.0, 4.0000005], dtype=np.float32)
    assert a.sha256() != b.sha256()
    c = _synthetic()
    c.counts["blk.0.attn_q.weight"] = 4
    assert a.sha256() != c.sha256()


def test_save_load_round_trip_is_exact(small_imatrix: ImportanceMatrix, tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    save_imatrix(small_imatrix, path)
    assert os.listdir(tmp_path) == ["imatrix.gguf"]  # no .partial left behind
    back = load_imatrix(path)
    assert back.sums.keys() == small_imatrix.sums.keys()
    for name, sums in small_imatrix.sums.items():
        np.testing.assert_array_equal(back.sums[name], sums)
    assert back.counts == small_imatrix.counts
    assert (back.chunk_count, back.chunk_size) == (N_WINDOWS, N_CTX)
    assert back.datasets == ["pl-en:calib"]
    assert back.sha256() == small_imatrix.sha256()


def test_round_trip_without_a_dataset_name(tmp_path: Path) -> None:
    matrix = _synthetic()
    matrix.datasets = []
    save_imatrix(matrix, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.get_field("imatrix.datasets") is not None  # llama-quantize requires the key
    assert load_imatrix(tmp_path / "m.gguf").sha256() == matrix.sha256()


def test_file_layout_is_llama_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    save_imatrix(_synthetic(), path)
    reader = gguf.GGUFReader(path)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys == ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"]
    assert reader.get_field("general.type").contents() == "imatrix"
    assert reader.get_field("imatrix.chunk_count").types == [gguf.GGUFValueType.UINT32]
    layout = [(t.name, t.tensor_type, t.shape.tolist()) for t in reader.tensors]
    f32 = gguf.GGMLQuantizationType.F32
    assert layout == [
        ("blk.0.attn_q.weight.in_sum2", f32, [4, 1]),
        ("blk.0.attn_q.weight.counts", f32, [1, 1]),
        ("blk.1.ffn_down.weight.in_sum2", f32, [2, 1]),
        ("blk.1.ffn_down.weight.counts", f32, [1, 1]),
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="does not exist"):
        load_imatrix(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"GGUF", os.urandom(64), b"not a gguf file at all"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(ImatrixError, match=r"junk\.gguf"):
        load_imatrix(path)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, -1])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "m.gguf"
    save_imatrix(_synthetic(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:-1])
    with pytest.raises(ImatrixError, match=r"m\.gguf"):
        load_imatrix(path)


def test_a_model_gguf_is_not_an_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ImatrixError, match=r"model\.gguf.*not an importance matrix"):
        load_imatrix(path)


# --- against ggml's own GGUF code (the library llama-imatrix and llama-quantize use) -------------


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


class _GgmlInitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


# ggml's base library under each platform's naming, as llama-cpp-python names its own libraries.
GGML_BASE_NAMES = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml-base.dll")


def ggml_base() -> Path:
    """libggml-base from the installed llama-cpp-python, in the directory it loads libllama from.

    That is $LLAMA_CPP_LIB_PATH when set, else the package's lib/ (llama_cpp/llama_cpp.py). Where
    it is missing the ggml cross-checks cannot run: a skip on a developer's machine, a failure
    under CI (CI=true), where a skip would hide that they never ran.
    """
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    try:
        import llama_cpp
    except ImportError:
        missing("llama-cpp-python is not installed")
    lib_dir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    found = [lib_dir / name for name in GGML_BASE_NAMES if (lib_dir / name).exists()]
    if not found:
        missing(f"no {' or '.join(GGML_BASE_NAMES)} in {lib_dir}")
    return found[0]


def test_ggml_base_is_found_where_llama_cpp_loads_its_libraries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CI", raising=False)
    real = ggml_base()
    (tmp_path / real.name).symlink_to(real)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    assert ggml_base() == tmp_path / real.name


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail), (None, pytest.skip)])
def test_a_missing_ggml_base_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None, outcome: Any
) -> None:
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))  # a directory without the library
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as raised:
        ggml_base()
    assert raised.type is outcome.Exception


@pytest.fixture(scope="module")
def ggml() -> Any:
    lib = ctypes.CDLL(str(ggml_base()))
    p, i64, s = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
    signatures = {
        "gguf_init_from_file": (p, [s, _InitParams]),
        "gguf_init_empty": (p, []),
        "gguf_free": (None, [p]),
        "gguf_get_n_kv": (i64, [p]),
        "gguf_get_key": (s, [p, i64]),
        "gguf_find_key": (i64, [p, s]),
        "gguf_get_val_str": (s, [p, i64]),
        "gguf_get_val_u32": (ctypes.c_uint32, [p, i64]),
        "gguf_get_arr_n": (ctypes.c_size_t, [p, i64]),
        "gguf_get_arr_str": (s, [p, i64, ctypes.c_size_t]),
        "gguf_get_n_tensors": (i64, [p]),
        "gguf_get_tensor_name": (s, [p, i64]),
        "gguf_get_tensor_type": (ctypes.c_int, [p, i64]),
        "gguf_get_tensor_ne": (ctypes.POINTER(i64), [p, i64]),
        "gguf_set_val_str": (None, [p, s, s]),
        "gguf_set_val_u32": (None, [p, s, ctypes.c_uint32]),
        "gguf_set_arr_str": (None, [p, s, ctypes.POINTER(s), ctypes.c_size_t]),
        "gguf_add_tensor": (None, [p, p]),
        "gguf_write_to_file": (ctypes.c_bool, [p, s, ctypes.c_bool]),
        "ggml_init": (p, [_GgmlInitParams]),
        "ggml_free": (None, [p]),
        "ggml_new_tensor_2d": (p, [p, ctypes.c_int, i64, i64]),
        "ggml_set_name": (p, [p, s]),
        "ggml_get_data": (p, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _ggml_read(lib: Any, path: Path) -> dict[str, Any] | None:
    """What ggml's GGUF reader sees (with tensor data loaded, as llama-quantize loads it)."""
    ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), _InitParams(False, ctypes.pointer(ctx)))
    if not g:
        return None
    try:
        keys = [lib.gguf_get_key(g, i).decode() for i in range(lib.gguf_get_n_kv(g))]
        ds = lib.gguf_find_key(g, b"imatrix.datasets")
        tensors = [
            (
                lib.gguf_get_tensor_name(g, i).decode(),
                lib.gguf_get_tensor_type(g, i),
                lib.gguf_get_tensor_ne(g, i)[:2],
            )
            for i in range(lib.gguf_get_n_tensors(g))
        ]
        return {
            "keys": keys,
            "type": lib.gguf_get_val_str(g, lib.gguf_find_key(g, b"general.type")).decode(),
            "datasets": [
                lib.gguf_get_arr_str(g, ds, i).decode() for i in range(lib.gguf_get_arr_n(g, ds))
            ],
            "chunk_count": lib.gguf_get_val_u32(g, lib.gguf_find_key(g, b"imatrix.chunk_count")),
            "chunk_size": lib.gguf_get_val_u32(g, lib.gguf_find_key(g, b"imatrix.chunk_size")),
            "tensors": tensors,
        }
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)


def test_ggml_reads_our_file_as_llama_imatrix_writes_it(ggml: Any, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    save_imatrix(_synthetic(), path)
    seen = _ggml_read(ggml, path)
    assert seen is not None
    assert seen["type"] == "imatrix"
    assert seen["datasets"] == ["a.txt"]
    assert (seen["chunk_count"], seen["chunk_size"]) == (1, 3)
    assert seen["tensors"] == [
        ("blk.0.attn_q.weight.in_sum2", 0, [4, 1]),  # ggml type 0 is F32
        ("blk.0.attn_q.weight.counts", 0, [1, 1]),
        ("blk.1.ffn_down.weight.in_sum2", 0, [2, 1]),
        ("blk.1.ffn_down.weight.counts", 0, [1, 1]),
    ]
    # A file cut anywhere, even in the trailing padding, is refused by ggml and by us alike.
    path.write_bytes(path.read_bytes()[:-1])
    assert _ggml_read(ggml, path) is None


def test_we_read_a_file_written_by_ggml_like_llama_imatrix(ggml: Any, tmp_path: Path) -> None:
    """Write with ggml's gguf API, step for step as IMatrixCollector::save_imatrix does."""
    entries = {
        "blk.0.attn_k.weight": (np.array([1.5, 2.5, 0.25], dtype=np.float32), 512),
        "blk.3.ffn_down.weight": (np.array([9.0, 8.0], dtype=np.float32), 1024),
    }
    ctx = ggml.ggml_init(_GgmlInitParams(1 << 20, None, False))
    g = ggml.gguf_init_empty()
    try:
        ggml.gguf_set_val_str(g, b"general.type", b"imatrix")
        names = (ctypes.c_char_p * 1)(b"wiki.train.raw")
        ggml.gguf_set_arr_str(g, b"imatrix.datasets", names, 1)
        ggml.gguf_set_val_u32(g, b"imatrix.chunk_count", 2)
        ggml.gguf_set_val_u32(g, b"imatrix.chunk_size", 512)
        for name, (sums, count) in sorted(entries.items()):
            in_sum2 = ggml.ggml_new_tensor_2d(ctx, 0, sums.size, 1)
            counts = ggml.ggml_new_tensor_2d(ctx, 0, 1, 1)
            ggml.ggml_set_name(in_sum2, f"{name}.in_sum2".encode())
            ggml.ggml_set_name(counts, f"{name}.counts".encode())
            ctypes.memmove(ggml.ggml_get_data(in_sum2), sums.ctypes.data, sums.nbytes)
            count_f32 = np.array([count], dtype=np.float32)
            ctypes.memmove(ggml.ggml_get_data(counts), count_f32.ctypes.data, 4)
            ggml.gguf_add_tensor(g, in_sum2)
            ggml.gguf_add_tensor(g, counts)
        assert ggml.gguf_write_to_file(g, str(tmp_path / "theirs.gguf").encode(), False)
    finally:
        ggml.gguf_free(g)
        ggml.ggml_free(ctx)

    matrix = load_imatrix(tmp_path / "theirs.gguf")
    assert matrix.datasets == ["wiki.train.raw"]
    assert (matrix.chunk_count, matrix.chunk_size) == (2, 512)
    assert matrix.counts == {name: count for name, (_, count) in entries.items()}
    for name, (sums, _) in entries.items():
        np.testing.assert_array_equal(matrix.sums[name], sums)
