"""Packaging: setup.py ships only files that exist, and package.xml declares what the code imports.

Every third-party module imported under efs_ros/ and launch/ (anywhere in a file, lazy imports
too) needs an exec dependency in package.xml, and every one imported under test/ a dependency of
any kind. The mapping from module to rosdep key is below; the keys were checked against
ros/rosdistro rosdep/python.yaml (python3-*) and kilted/distribution.yaml (ROS packages). A module
with no rosdep key is listed as pip-only and must be in requirements.txt and in a `pip install`
line of the README's "Install on a full ROS 2 distro" note.
"""
from __future__ import annotations

import ast
import os
import re
import runpy
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]

# module (top level; two parts for namespace packages) -> rosdep key or ROS package
ROSDEP_KEYS = {
    # ROS 2 packages (kilted/distribution.yaml)
    "rclpy": "rclpy",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "rcl_interfaces": "rcl_interfaces",
    "event_camera_msgs": "event_camera_msgs",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    # rosdep/python.yaml
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "numba": "python3-numba",
    "yaml": "python3-yaml",
    "ruamel.yaml": "python3-ruamel.yaml",
    "serial": "python3-serial",
    "matplotlib": "python3-matplotlib",
    "skimage": "python3-skimage",
    "PIL": "python3-pil",
    "tqdm": "python3-tqdm",
    "rosbags": "python3-rosbags-pip",
    "onnxruntime": "python3-onnxruntime-pip",
    "torch": "python3-torch",
    "pytest": "python3-pytest",
    "hypothesis": "python3-hypothesis",
    "cv2": "python3-opencv",  # the key issue 12 names (rosdep/python.yaml: python3-opencv)
}
# No key of their own, installed by the key named: numba needs llvmlite (Debian's python3-numba
# depends on python3-llvmlite), rosbags needs lz4 and, before Python 3.14, backports.zstd.
PROVIDED_BY = {
    "llvmlite": "python3-numba",
    "lz4": "python3-rosbags-pip",
    "backports.zstd": "python3-rosbags-pip",
}
# module -> pip distribution: no rosdep key exists, so the README says to pip install them.
PIP_ONLY = {
    "safetensors": "safetensors",  # model weights (models/*.safetensors)
    "onnx": "onnx",  # ONNX export check (efs_ros/nets/export.py)
}
# Required by the tests (independent EVT3 decoders the codec is cross-checked against); efs_bench
# also times them as baselines when they are installed.
PIP_ONLY_TESTS = {
    "evt3": "evt3",
    "faery": "faery",
}
# Imported only behind a check that reports it missing; documented in the README, not declared.
OPTIONAL = {"tensorrt": "tensorrt"}
# Standard library in a newer Python than sys.stdlib_module_names here knows (3.14: compression.zstd).
NEWER_STDLIB = {"compression"}
NAMESPACE_PACKAGES = {"backports", "ruamel"}
# Declared in package.xml with no import to map it from (the ament_python template's copyright
# linter); checked against kilted/distribution.yaml like the rest.
DECLARED_NOT_IMPORTED = {"ament_copyright"}
# pytest plugins the configuration needs (pytest.ini option -> rosdep key)
PYTEST_PLUGINS = {"timeout": "python3-pytest-timeout"}


def _imported_modules(folder: Path, local: set[str] = frozenset()) -> dict[str, list[str]]:
    """Third-party modules imported by the .py files under `folder`, with where. `local`: the
    folder's own modules that are imported by bare name (test helpers)."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from backports import zstd` imports the distribution backports.zstd
                names = ([f"{node.module}.{alias.name}" for alias in node.names]
                         if node.module in NAMESPACE_PACKAGES else [node.module])
            else:
                continue
            for name in names:
                parts = name.split(".")
                top = ".".join(parts[:2]) if parts[0] in NAMESPACE_PACKAGES else parts[0]
                if (parts[0] in sys.stdlib_module_names or parts[0] in NEWER_STDLIB
                        or top == "efs_ros" or top in local):
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def _package_xml_deps() -> dict[str, set[str]]:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3", "package.xml must stay format 3"
    deps = {tag: {e.text.strip() for e in root.iter(tag)}
            for tag in ("depend", "exec_depend", "test_depend", "build_depend")}
    return {"exec": deps["depend"] | deps["exec_depend"],
            "test": deps["depend"] | deps["exec_depend"] | deps["test_depend"]}


def _key_for(module: str) -> str | None:
    return ROSDEP_KEYS.get(module) or PROVIDED_BY.get(module)


def _unknown(found: dict[str, list[str]], known: set[str]) -> list[str]:
    return [f"{m} (imported at {where[0]})" for m, where in sorted(found.items()) if m not in known]


def _readme_install_note() -> str:
    """The README section titled "Install on a full ROS 2 distro", up to the next heading of the
    same or a higher level (a `#` line inside a code block is no heading)."""
    lines, level, in_code = [], None, False
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"(#+) (.*?)\s*$", line)
        if heading and level is not None and len(heading.group(1)) <= level:
            break
        if level is not None:
            lines.append(line)
        elif heading and heading.group(2) == "Install on a full ROS 2 distro":
            level = len(heading.group(1))
    assert level is not None, 'README.md has no "Install on a full ROS 2 distro" section'
    return "\n".join(lines)


def _requirement_names() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


# --------------------------------------------------------------------------------------- setup.py

@pytest.fixture(scope="module")
def setup_kwargs():
    """setup.py's arguments, globs evaluated, as setuptools would get them in the source tree."""
    captured = {}
    with mock.patch("setuptools.setup", side_effect=lambda **kw: captured.update(kw)):
        cwd = Path.cwd()
        try:
            os.chdir(REPO)
            runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
        finally:
            os.chdir(cwd)
    assert captured, "setup.py did not call setuptools.setup"
    return captured


def test_setup_data_files_all_exist(setup_kwargs):
    missing, empty = [], []
    for dest, files in setup_kwargs.get("data_files", []):
        if not files:
            empty.append(dest)
        missing += [f"{f} (-> {dest})" for f in files if not (REPO / f).is_file()]
    assert not missing, f"setup.py data_files name files that do not exist: {missing}"
    assert not empty, f"setup.py data_files entries whose globs match nothing: {empty}"


def test_setup_package_data_all_exist(setup_kwargs):
    missing = []
    for package, patterns in setup_kwargs.get("package_data", {}).items():
        folder = REPO / package.replace(".", "/")
        missing += [f"{package}: {p}" for p in patterns
                    if not any(f.is_file() for f in folder.glob(p))]
    assert not missing, f"setup.py package_data names files that do not exist: {missing}"


def test_setup_console_scripts_point_at_existing_functions(setup_kwargs):
    bad = []
    for entry in setup_kwargs.get("entry_points", {}).get("console_scripts", []):
        name, target = (s.strip() for s in entry.split("=", 1))
        module, func = target.split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.is_file():
            bad.append(f"{name}: no file {path.relative_to(REPO)}")
            continue
        defined = {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body
                   if isinstance(n, ast.FunctionDef)}
        if func not in defined:
            bad.append(f"{name}: {module} defines no {func}()")
    assert not bad, f"console_scripts that cannot start: {bad}"


# ------------------------------------------------------------------------------------ package.xml

def test_package_xml_declares_every_runtime_import():
    found = _imported_modules(REPO / "efs_ros")
    for module, where in _imported_modules(REPO / "launch").items():
        found.setdefault(module, []).extend(where)
    # efs_bench compares against the test-only decoders when they are installed
    known = set(ROSDEP_KEYS) | set(PROVIDED_BY) | set(PIP_ONLY) | set(PIP_ONLY_TESTS) | set(OPTIONAL)
    unknown = _unknown(found, known)
    assert not unknown, ("third-party modules with no entry in this test's mapping (find their "
                         f"rosdep key, or list them as pip-only): {unknown}")
    exec_deps = _package_xml_deps()["exec"]
    undeclared = sorted(f"{_key_for(m)} (for {m}, imported at {found[m][0]})"
                        for m in found if _key_for(m) and _key_for(m) not in exec_deps)
    assert not undeclared, f"package.xml lacks a depend/exec_depend on: {undeclared}"


def test_package_xml_declares_every_test_import_and_plugin():
    found = _imported_modules(REPO / "test", local={p.stem for p in (REPO / "test").glob("*.py")})
    known = set(ROSDEP_KEYS) | set(PROVIDED_BY) | set(PIP_ONLY) | set(PIP_ONLY_TESTS) | set(OPTIONAL)
    unknown = _unknown(found, known)
    assert not unknown, ("third-party modules with no entry in this test's mapping (find their "
                         f"rosdep key, or list them as pip-only): {unknown}")
    test_deps = _package_xml_deps()["test"]
    needed = {_key_for(m): f"{m}, imported at {where[0]}" for m, where in found.items() if _key_for(m)}
    ini = (REPO / "pytest.ini").read_text(encoding="utf-8")
    needed.update({key: f"pytest.ini option {opt!r}" for opt, key in PYTEST_PLUGINS.items()
                   if re.search(rf"^{opt}\s*=", ini, re.M)})
    undeclared = sorted(f"{key} (for {why})" for key, why in needed.items() if key not in test_deps)
    assert not undeclared, f"package.xml lacks a test_depend (or depend/exec_depend) on: {undeclared}"


def test_pip_only_modules_are_pinned_and_documented():
    """No rosdep key: requirements.txt installs them here, the README tells a ROS install how."""
    note = _readme_install_note()
    pip_lines = " ".join(line for line in note.splitlines() if "pip install" in line).lower()
    required = _requirement_names()
    for dist in {**PIP_ONLY, **PIP_ONLY_TESTS}.values():
        assert dist in required, f"{dist}: pip-only, so requirements.txt must pin it"
        assert re.search(rf"(?<![\w.-]){re.escape(dist)}(?![\w-])", pip_lines), \
            f"{dist}: pip-only, so the README's install note needs it in a `pip install` line"
    for dist in OPTIONAL.values():
        assert dist in note, f"{dist}: optional, so the README's install note must say so"


def test_package_xml_names_only_verified_keys():
    """Every dependency in package.xml is one this test's checked mapping knows: no made-up key
    (such as python3-safetensors) for a pip-only module."""
    root = ET.parse(REPO / "package.xml").getroot()
    tags = ("depend", "build_depend", "exec_depend", "test_depend", "build_export_depend")
    declared = {e.text.strip() for tag in tags for e in root.iter(tag)}
    verified = set(ROSDEP_KEYS.values()) | set(PROVIDED_BY.values()) | set(PYTEST_PLUGINS.values())
    unverified = sorted(declared - verified - DECLARED_NOT_IMPORTED)
    assert not unverified, f"package.xml names keys this test has not verified: {unverified}"


def test_shipped_node_parameters_are_the_node_and_pipeline_defaults():
    """config/all_in_focus.yaml (what `ros2 launch` loads) says what the node and PipelineConfig
    default to, so the benchmarks of the default path measure what a robot runs."""
    from ruamel.yaml import YAML

    from efs_ros.core.pipeline import PipelineConfig
    from efs_ros.nodes.all_in_focus import NodeSettings

    params = YAML(typ="safe").load((REPO / "config" / "all_in_focus.yaml").read_text())
    params = params["all_in_focus"]["ros__parameters"]
    defaults = NodeSettings()
    for key, value in params.items():
        assert getattr(defaults, key) == value, key
    for key in ("method", "merge", "n_bins"):
        assert params[key] == getattr(PipelineConfig(), key), key
