#!/usr/bin/env bash
# Create or reuse the project's virtual environment .venv and install into it what the tests and
# the demo need. `make demo`, `make test` and `make lint` run this first, so it must be fast when
# nothing changed: a stamp inside .venv holds a hash of the files that decide what gets installed,
# and a matching stamp skips the install. The stamp is written last, so an interrupted install
# runs again. PYTHON names the interpreter that creates .venv (default python3, 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
py=$venv/bin/python
stamp=$venv/.bielik-quant-setup
inputs=(pyproject.toml .ci/constraints.txt .ci/gptqmodel-requirements.txt scripts/setup-venv.sh)

say() { echo "setup-venv: $*" >&2; }
needs_311() {
    if ! "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        version=$("$1" --version 2>/dev/null) || version="not found"
        say "Python 3.11 or newer is needed; $1 is $version" \
            "(run make with PYTHON=/path/to/python3.11)"
        exit 1
    fi
}

# A folder without a working pip (e.g. ensurepip missing when it was made) is made again.
if ! "$py" -m pip --version >/dev/null 2>&1; then
    needs_311 "${PYTHON:-python3}"
    say "creating $venv"
    "${PYTHON:-python3}" -m venv --clear "$venv"
fi
needs_311 "$py"

key=$("$py" -c '
import hashlib, sys
h = hashlib.sha256()
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        h.update(path.encode() + b"\0" + hashlib.sha256(f.read()).digest())
print(h.hexdigest())' "${inputs[@]}")
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
    exit 0
fi
rm -f "$stamp"

pip() { "$py" -m pip --quiet --disable-pip-version-check "$@"; }

# torch goes in before anything that depends on it, or pip resolves its own torch: on Linux PyPI's
# build is the multi-GB CUDA one. With an NVIDIA GPU (nvidia-smi answers) that build is the one we
# want, as it is on macOS (no CUDA builds there); elsewhere the CPU build, which PyTorch's CPU index
# holds when pip's own indexes do not.
if nvidia-smi >/dev/null 2>&1; then
    gpu=1
    say "torch 2.13.0 (nvidia-smi sees a GPU: PyPI's CUDA build)"
    pip install torch==2.13.0
    if ! "$py" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
        say "warning: pip installed torch's CPU build although nvidia-smi sees a GPU" \
            "(a local wheel in pip's find-links?); the GPU paths will not run"
    fi
else
    gpu=0
    if [ "$(uname -s)" = Darwin ]; then
        say "torch 2.13.0"
        pip install torch==2.13.0
    else
        say "torch 2.13.0+cpu (no GPU: the CPU build)"
        pip install "torch==2.13.0+cpu" 2>/dev/null ||
            pip install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi
# The constraint then holds torch for every later install: a package that wants another torch
# fails here instead of replacing it.
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"

say "llama-cpp-python (compiles llama.cpp: about 10 minutes on 2 cores unless pip's cache has it)"
pip install "llama-cpp-python>=0.3.36"

# GPTQModel 7.7 declares torch>=2.14.1 but runs on 2.13: itself without its declared
# dependencies, then those dependencies (torch excepted) and optimum, which transformers needs to
# load GPTQ/AWQ checkpoints.
say "gptqmodel 7.7.0, then its dependencies but torch" \
    "(pip then says it wants torch>=2.14.1: expected)"
pip install --no-deps "gptqmodel==7.7.0"
pip install -r .ci/gptqmodel-requirements.txt

# The extras under test (train, gguf, hqq, mlx, data, report, dev). Without a GPU, DISABLE_CUDA=1
# tells hqq's setup to skip its CUDA kernels. EXL2 needs CUDA and is tested without exllamav2
# (see README).
say "bielik-quant[test], editable"
if [ "$gpu" = 1 ]; then
    pip install -e ".[test]"
else
    DISABLE_CUDA=1 pip install -e ".[test]"
fi

echo "$key" >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"
say "done; $venv is ready"
