"""Packaging and import rules (DESIGN.md §3, §4 "Packaging").

The import checks run in a fresh interpreter, because this pytest process may
already hold modules that other tests imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

import pytest

REPO = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11+")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter from the repo root; it prints one JSON line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _normalise(req: str) -> str:
    return "".join(req.split()).lower()


def test_requirements_txt_matches_project_dependencies():
    deps = [_normalise(d) for d in _pyproject()["project"]["dependencies"]]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    reqs = [_normalise(line.split("#", 1)[0]) for line in lines]
    reqs = [r for r in reqs if r]
    assert sorted(reqs) == sorted(deps), (
        f"requirements.txt {reqs} differs from pyproject [project].dependencies {deps}"
    )


def test_pyproject_metadata_for_comfy_registry():
    meta = _pyproject()
    project = meta["project"]
    assert "comfyui" not in project["name"].lower(), project["name"]
    assert project["version"] and project["license"] and project["urls"]["Repository"]
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # ComfyUI brings its own torch: ask for a floor only, never a pin or a build.
    torch_req = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch_req == ["torch>=2.1"], torch_req


def test_every_package_folder_is_listed_in_pyproject():
    st = _pyproject()["tool"]["setuptools"]
    listed = set(st["packages"])
    assert st["package-dir"] == {"nitrogen_kernels": "kernels"}
    roots = {"nitrogen_core": REPO / "nitrogen_core", "nitrogen_kernels": REPO / "kernels"}
    on_disk = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            on_disk.add(".".join((name, *rel)))
    missing = on_disk - listed
    assert not missing, f"packages on disk but not in [tool.setuptools].packages: {sorted(missing)}"
    for pkg in listed:
        top, *rest = pkg.split(".")
        folder = roots[top].joinpath(*rest)
        assert folder.is_dir(), f"[tool.setuptools].packages lists {pkg}, but {folder} is missing"
    assert not {"nodes", "kernels"} & {p.split(".")[0] for p in listed}


def test_import_nitrogen_core_needs_no_comfy_nor_triton():
    out = _run("""
        import json, sys
        import nitrogen_core
        banned = ("comfy", "folder_paths", "triton", "nodes", "kernels")
        hits = sorted(m for m in sys.modules if m.split(".")[0] in banned)
        print(json.dumps({"file": nitrogen_core.__file__, "hits": hits}))
    """)
    assert Path(out["file"]).resolve() == REPO / "nitrogen_core" / "__init__.py", out["file"]
    assert out["hits"] == [], f"importing nitrogen_core pulled in {out['hits']}"


def test_comfyui_style_load_of_the_pack_and_kernels():
    # ComfyUI loads a custom-node folder by path under a path-derived name
    # (nodes.py:load_custom_node); a name without dots behaves the same here.
    out = _run(f"""
        import importlib.util, json, sys
        repo = {str(REPO)!r}
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location(
            "ComfyUI-NitroGen", repo + "/__init__.py", submodule_search_locations=[repo])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pack
        spec.loader.exec_module(pack)
        from nitrogen_core._kernels import load_kernels
        kernels = load_kernels()
        new = sorted(set(sys.modules) - before)
        print(json.dumps({{
            "class_mappings": type(pack.NODE_CLASS_MAPPINGS).__name__,
            "display_mappings": type(pack.NODE_DISPLAY_NAME_MAPPINGS).__name__,
            "all": sorted(pack.__all__),
            "kernels_name": kernels.__name__,
            "kernels_file": kernels.__file__,
            "same_again": load_kernels() is kernels,
            "top_level_new": sorted({{m.split(".")[0] for m in new}}),
        }}))
    """)
    assert out["class_mappings"] == "dict" and out["display_mappings"] == "dict", out
    assert out["all"] == ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"], out["all"]
    assert out["kernels_name"] == "nitrogen_kernels", out
    # The checkout's kernels/ folder, or the installed copy of it.
    assert Path(out["kernels_file"]).parent.name in ("kernels", "nitrogen_kernels"), out["kernels_file"]
    assert out["same_again"]
    leaked = {"nodes", "kernels", "comfy", "folder_paths", "triton"} & set(out["top_level_new"])
    assert not leaked, f"loading the pack added top-level modules {sorted(leaked)}"


def test_kernel_loader_never_touches_sys_path():
    out = _run("""
        import json, sys
        before = list(sys.path)
        from nitrogen_core._kernels import load_kernels
        load_kernels()
        print(json.dumps({"same": sys.path == before}))
    """)
    assert out["same"], "load_kernels() changed sys.path"
