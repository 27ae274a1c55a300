# Source this file to build and run the participant's `tch` backend (LibTorch on the CPU)
# against PyPI's torch 2.9.0, the LibTorch version burn 0.22's `tch` backend is written for:
#
#   source examples/bench/tch-env.sh
#   cargo run -p cairn-examples --features tch --bin train-bench -- --backends cpu,tch
#
# It makes a venv (CAIRN_TCH_VENV, default ~/.cache/cairn-tch-venv) with torch 2.9.0 from PyPI
# once, then points torch-sys's build at it (LIBTORCH_USE_PYTORCH, so it never downloads) and the
# dynamic loader at its libraries. About 7 GB: PyPI's Linux wheel brings CUDA's libraries too,
# which LibTorch loads even to run on the CPU.
venv="${CAIRN_TCH_VENV:-$HOME/.cache/cairn-tch-venv}"
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet torch==2.9.0
fi
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
torch_lib="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset torch_lib venv
