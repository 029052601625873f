#!/usr/bin/env bash
# Make the current Python environment ready for `make demo` (and, with --test,
# for `make test`). Idempotent: when everything is already there it only checks
# and returns in about a second. It installs into the environment of $PYTHON
# and never creates a venv, so an already installed torch is reused.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1
cd "$(dirname "$0")/.."

say() { echo "[setup] $*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "error: '$PYTHON' not found; install Python >= 3.10 or run e.g. 'make PYTHON=python3.11 ...'" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    say "error: NitroGen needs Python >= 3.10, but $PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')." >&2
    say "       Run with a newer one, e.g. 'make PYTHON=python3.11 test'." >&2
    exit 1
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    say "error: pip is missing for $PYTHON; run '$PYTHON -m ensurepip --upgrade' first." >&2
    exit 1
fi

pip_install() {
    if ! "$PYTHON" -m pip install --quiet "$@"; then
        say "error: 'pip install $*' failed. If pip refused because the environment is" >&2
        say "       externally managed, create and activate a venv (python3 -m venv .venv)," >&2
        say "       install torch into it, and run make again." >&2
        return 1
    fi
}

# torch first, pinned. On this project's machines `torch==2.13.0` resolves to the
# CPU wheel that lies on disk. Elsewhere, install the torch build you want from
# pytorch.org before running this. Never ask pip for an unpinned `torch`: with no
# torch present that pulls a multi-GB CUDA build.
if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
    say "torch not importable; installing torch==2.13.0"
    pip_install "torch==2.13.0"
fi

# requirements.txt holds floors only (>=); check them without calling pip, so a
# ready environment stays fast. torch>=2.1 is already met here, so pip pulls
# nothing big when it does run.
missing="$("$PYTHON" - <<'PY'
import re
from importlib import metadata

def vtuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])

bad = []
for line in open("requirements.txt"):
    req = line.split("#", 1)[0].strip()
    if not req:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)", req)
    if not m:                      # anything fancier: let pip decide
        bad.append(req)
        continue
    try:
        have = metadata.version(m.group(1))
    except metadata.PackageNotFoundError:
        bad.append(req)
        continue
    if vtuple(have) < vtuple(m.group(2)):
        bad.append(req)
print(" ".join(bad))
PY
)"
if [ -n "$missing" ]; then
    say "installing requirements.txt (missing or too old: $missing)"
    pip_install -r requirements.txt
fi

if [ "$WANT_TEST" = 1 ]; then
    if ! "$PYTHON" -c 'import pytest' >/dev/null 2>&1; then
        say "installing pytest"
        pip_install "pytest>=7"
    fi
    # resvg-py rasterises the SVG emoji styles of `data emoji`; without it those data tests skip.
    if ! "$PYTHON" -c 'import resvg_py' >/dev/null 2>&1; then
        say "installing resvg-py (optional; for the SVG emoji-style data tests)"
        if ! "$PYTHON" -m pip install --quiet "resvg-py==0.5.0"; then
            say "warning: resvg-py did not install; the SVG data tests will be skipped."
        fi
    fi
    # triton is optional: the kernel tests run it in interpreter mode on the CPU
    # and skip themselves when it is absent, so a failed install is not fatal.
    if ! "$PYTHON" -c 'import triton' >/dev/null 2>&1; then
        say "installing triton (optional; for the interpreter-mode kernel tests)"
        if ! "$PYTHON" -m pip install --quiet "triton>=3.0"; then
            say "warning: triton did not install; the Triton kernel tests will be skipped."
        fi
    fi
fi
say "ok ($("$PYTHON" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")'))"
