"""launch/sweep.launch.py (for real ROS installs) and efs_bringup start the same graph.

`launch` cannot be installed here, so the launch file runs against small stand-ins for the
launch API that record what it declares; substitutions are evaluated with the argument defaults
or the values a case sets.
"""
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from efs_ros.tools import bringup
from efs_ros.tools.graph import CONFIG_DIR, GRAPH, load_node_parameters, nodes_for

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "sweep.launch.py"


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(_Recorded):
    def resolve(self, env):
        return env[self.args[0]]


class PathJoinSubstitution(_Recorded):
    def resolve(self, env):
        return "/".join(_resolve(part, env) for part in self.args[0])


class PythonExpression(_Recorded):
    def resolve(self, env):
        return str(eval("".join(_resolve(p, env) for p in self.args[0])))  # noqa: S307 - test stand-in


class FindPackageShare(_Recorded):
    def resolve(self, env):
        return f"<share:{self.args[0]}>"


class IfCondition(_Recorded):
    def holds(self, env):
        return _resolve(self.args[0], env).lower() in ("true", "1")


def _resolve(value, env):
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_resolve(v, env) for v in value)
    return value.resolve(env)


@pytest.fixture
def launch_description(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": _Recorded},
        "launch.actions": {"DeclareLaunchArgument": _Recorded, "SetEnvironmentVariable": _Recorded},
        "launch.conditions": {"IfCondition": IfCondition},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                 "PathJoinSubstitution": PathJoinSubstitution,
                                 "PythonExpression": PythonExpression},
        "launch_ros.actions": {"Node": _Recorded},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "launch_ros", types.ModuleType("launch_ros"))
    spec = importlib.util.spec_from_file_location("sweep_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _launched_nodes(description, overrides):
    actions = description.args[0]
    declared = {a.args[0]: a for a in actions
                if a.args and type(a) is _Recorded and "default_value" in a.kwargs}
    env = {name: _resolve(a.kwargs["default_value"], {}) for name, a in declared.items()}
    env.update(overrides)
    nodes = []
    for action in actions:
        kw = action.kwargs
        if "executable" not in kw:
            continue
        if kw.get("condition") is not None and not kw["condition"].holds(env):
            continue
        files, inline = [], {}
        for entry in kw["parameters"]:
            if isinstance(entry, dict):
                inline.update({k: _resolve(v, env) for k, v in entry.items()})
            else:
                files.append(_resolve(entry, env))
        nodes.append({"package": kw["package"], "executable": kw["executable"], "name": kw["name"],
                      "files": [Path(f).name for f in files], "inline": inline})
    return declared, nodes


@pytest.mark.parametrize("rig", ["sim", "real"])
def test_launch_file_and_bringup_start_the_same_nodes(launch_description, rig):
    declared, launched = _launched_nodes(launch_description, {"rig": rig})
    expected = nodes_for(rig)
    assert [(n["name"], n["executable"]) for n in launched] == [(s.name, s.executable) for s in expected]
    assert [n["files"] for n in launched] == [[s.params_file] for s in expected]
    assert all(n["package"] == "efs_ros" for n in launched)
    # Same launch arguments and choices on both sides.
    parser = bringup.build_parser()
    option = {a.dest: a for a in parser._actions}
    assert declared["rig"].kwargs["choices"] == option["rig"].choices
    assert declared["backend"].kwargs["choices"] == option["backend"].choices
    assert declared["lens_driver"].kwargs["choices"] == option["lens_driver"].choices
    args = parser.parse_args(["--rig", rig])
    for node, spec in zip(launched, expected, strict=True):
        inline = {k: v for k, v in node["inline"].items() if k != "use_sim_time"}
        from_bringup = bringup.node_overrides(spec, args)
        for key, value in inline.items():
            assert str(from_bringup.get(key, "")) == value or key == "port", (spec.name, key)


def test_every_node_executable_is_an_installed_entry_point():
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.value.startswith("efs_ros.")}
    for spec in GRAPH:
        assert spec.executable in scripts, f"{spec.executable} is not a console script"
        module, _, attr = scripts[spec.executable].value.partition(":")
        assert spec.node_class.split(":")[0] == module


def test_parameter_files_exist_and_parse():
    for spec in GRAPH:
        path = CONFIG_DIR / spec.params_file
        assert path.is_file(), f"missing {path}"
        params = load_node_parameters(path, spec.name)
        assert params, f"{path} declares no parameters for {spec.name}"


def test_fastdds_profile_is_valid_xml_with_builtin_transports_off():
    import xml.etree.ElementTree as ET

    root = ET.parse(CONFIG_DIR / "fastdds_localhost.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    assert root.find(".//d:useBuiltinTransports", ns).text.strip() == "false"
    allowed = [i.get("name") for i in root.findall(".//d:allowlist/d:interface", ns)]
    assert allowed == ["127.0.0.1"]


@pytest.mark.parametrize("module, bad", [
    ("efs_ros.nodes.sim_rig", "width:=3"),                       # outside the descriptor range
    ("efs_ros.nodes.focus_controller", "near_dpt:=0.1"),         # in range, fails validation
    ("efs_ros.nodes.all_in_focus", "backend:=foo"),
])
def test_node_with_a_bad_parameter_exits_2_with_one_line(module, bad):
    """What `ros2 run`/launch users see: one line naming the parameter, status 2, no traceback
    (the half-built node must not be torn down through attributes it never set)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", module, "--ros-args", "-p", bad],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{module.rsplit('.', 1)[1]}: error: "), lines
    assert bad.split(":=")[0] in lines[0]
