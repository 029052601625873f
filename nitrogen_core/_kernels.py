"""Find this project's kernels under their one unique name, ``nitrogen_kernels``.

The kernels live in the repo folder ``kernels/``. An install maps that folder to
``nitrogen_kernels`` (``package-dir`` in pyproject.toml). A checkout that was not
installed (ComfyUI's ``custom_nodes/``, or ``python -m nitrogen_core`` from the
repo root) loads the same folder by file path under the same name.

We never put the repo root on ``sys.path``: PyPI has an unrelated ``kernels``
package and ComfyUI has its own top-level ``nodes`` module, and either would then
become ambiguous.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

KERNELS_MODULE = "nitrogen_kernels"
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"

_lock = threading.Lock()


def load_kernels() -> ModuleType:
    """Return the ``nitrogen_kernels`` module, importing it once."""
    module = sys.modules.get(KERNELS_MODULE)
    if module is not None:
        return module
    with _lock:
        module = sys.modules.get(KERNELS_MODULE)
        if module is not None:
            return module
        try:
            return importlib.import_module(KERNELS_MODULE)   # installed (pip install [-e] .)
        except ModuleNotFoundError as err:
            if err.name != KERNELS_MODULE:                  # a missing dependency inside it
                raise
        return _load_from_checkout()


def _load_from_checkout() -> ModuleType:
    init = KERNELS_DIR / "__init__.py"
    if not init.is_file():
        raise ImportError(
            f"{KERNELS_MODULE} is not installed and {init} does not exist; "
            "reinstall the project or restore the kernels/ folder of the checkout"
        )
    spec = importlib.util.spec_from_file_location(
        KERNELS_MODULE, init, submodule_search_locations=[str(KERNELS_DIR)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {init}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running, so `from . import x` inside kernels/ resolves.
    sys.modules[KERNELS_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == KERNELS_MODULE or n.startswith(KERNELS_MODULE + ".")]:
            del sys.modules[name]
        raise
    return module
