"""launch/sweep.launch.py (for real ROS installs) and efs_bringup start the same graph.

`launch` cannot be installed here, so the launch file runs against small stand-ins for the
launch API that record what it declares; substitutions are evaluated with the argument defaults
or the values a case sets. The stand-ins take exactly the parameters the real classes take, so a
misspelled or missing keyword fails here as it would under `ros2 launch`.
"""
import functools
import importlib.metadata
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest

from efs_ros.tools import bringup
from efs_ros.tools.graph import CONFIG_DIR, GRAPH, load_node_parameters, nodes_for

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "sweep.launch.py"


# The stand-ins spell out the constructor signatures of ROS 2 rolling as of Dec 2024, the line Kilted
# was branched from (jazzy has the same ones; the Kilted API docs show the same ExecuteLocal list),
# as read from
#   ros2/launch rolling @ 02595baf (tag 3.7.1): launch/launch/launch_description.py, action.py,
#     actions/declare_launch_argument.py, actions/set_environment_variable.py,
#     actions/execute_process.py, actions/execute_local.py, conditions/if_condition.py,
#     substitutions/launch_configuration.py, substitutions/path_join_substitution.py,
#     substitutions/python_expression.py
#   ros2/launch_ros rolling @ f9ab9371 (0.28.0+1): launch_ros/launch_ros/actions/node.py,
#     launch_ros/launch_ros/substitutions/find_package.py
# Keyword-only, required and **kwargs-forwarding parameters are kept as upstream has them, so a
# keyword that `ros2 launch` would reject raises the same TypeError here.


def _records(init):
    """Wrap a stand-in's __init__: Python checks the call against the parameter list that __init__
    spells out, then the call is kept as written (.args, .kwargs) and as bound (.bound: every
    parameter by name, defaults filled in, **kwargs merged in)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.args, self.kwargs, self.bound = args, kwargs, {}
        for name, parameter in list(signature.parameters.items())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                self.bound.update(bound.arguments[name])
            else:
                self.bound[name] = bound.arguments[name]

    return recording_init


class _StandIn:
    """Base of the stand-ins; each must define __init__ with its upstream parameter list."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__init__ = _records(cls.__dict__["__init__"])


# What the **kwargs of the actions end in: launch.Action takes `condition` only; a Node's **kwargs
# go through ExecuteProcess and ExecuteLocal first.
def _action_init(*, condition=None):
    """launch.Action.__init__."""


def _execute_local_init(*, process_description, shell=False, sigterm_timeout=None, sigkill_timeout=None,
                        emulate_tty=False, output="log",
                        output_format="[{this.process_description.final_name}] {line}",
                        cached_output=False, log_cmd=False, on_exit=None, respawn=False,
                        respawn_delay=None, respawn_max_retries=-1, **kwargs):
    """launch.actions.ExecuteLocal.__init__ (upstream the two timeouts default to the launch
    configurations `sigterm_timeout`/`sigkill_timeout`, default 5)."""
    _action_init(**kwargs)


def _execute_process_init(*, cmd, prefix=None, name=None, cwd=None, env=None, additional_env=None,
                          **kwargs):
    """launch.actions.ExecuteProcess.__init__: its own keywords make the process description."""
    _execute_local_init(process_description=(cmd, prefix, name, cwd, env, additional_env), **kwargs)


class LaunchDescription(_StandIn):
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        pass


class DeclareLaunchArgument(_StandIn):
    def __init__(self, name, *, default_value=None, description=None, choices=None, **kwargs):
        _action_init(**kwargs)
        # The two checks upstream makes on the spot (RuntimeError there too).
        if choices is not None and not choices:
            raise RuntimeError(f"{name}: empty choices")
        if isinstance(default_value, str) and choices is not None and default_value not in choices:
            raise RuntimeError(f"{name}: default {default_value!r} not in {choices}")


class SetEnvironmentVariable(_StandIn):
    def __init__(self, name, value, **kwargs):
        _action_init(**kwargs)


class Node(_StandIn):
    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None,
                 parameters=None, remappings=None, ros_arguments=None, arguments=None, **kwargs):
        if parameters is not None and not isinstance(parameters, list):
            raise TypeError(f"Node: parameters must be a list, got {type(parameters).__name__}")
        # Upstream builds `cmd` itself and passes exec_name on as the process name, so `cmd=` or
        # `process_description=` from the caller collide (TypeError) just as they do there.
        _execute_process_init(cmd=[package, executable, arguments, ros_arguments],
                              **{**kwargs, "name": exec_name})


class LaunchConfiguration(_StandIn):
    def __init__(self, variable_name, *, default=None):
        pass

    def resolve(self, env):
        name = _resolve(self.bound["variable_name"], env)
        if name not in env and self.bound["default"] is not None:
            return _resolve(self.bound["default"], env)
        return env[name]


class PathJoinSubstitution(_StandIn):
    def __init__(self, substitutions):
        pass

    def resolve(self, env):
        return "/".join(_resolve(part, env) for part in self.bound["substitutions"])


class PythonExpression(_StandIn):
    def __init__(self, expression, python_modules=["math"]):  # noqa: B006 - upstream's default
        pass

    def resolve(self, env):
        return str(eval(_resolve(self.bound["expression"], env)))  # noqa: S307 - test stand-in


class FindPackageShare(_StandIn):
    def __init__(self, package):
        pass

    def resolve(self, env):
        return f"<share:{_resolve(self.bound['package'], env)}>"


class IfCondition(_StandIn):
    def __init__(self, predicate_expression):
        pass

    def holds(self, env):
        return _resolve(self.bound["predicate_expression"], env).lower() in ("true", "1")


def _resolve(value, env):
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_resolve(v, env) for v in value)
    return value.resolve(env)


STAND_INS = {
    "launch": {"LaunchDescription": LaunchDescription},
    "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument,
                       "SetEnvironmentVariable": SetEnvironmentVariable},
    "launch.conditions": {"IfCondition": IfCondition},
    "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                             "PathJoinSubstitution": PathJoinSubstitution,
                             "PythonExpression": PythonExpression},
    "launch_ros": {},
    "launch_ros.actions": {"Node": Node},
    "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
}


def _generate(launch_file, monkeypatch):
    """Import `launch_file` with the stand-ins in place of launch/launch_ros and call it."""
    for name, attrs in STAND_INS.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("sweep_launch", launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.fixture
def launch_description(monkeypatch):
    return _generate(LAUNCH_FILE, monkeypatch)


def _launched_nodes(description, overrides):
    actions = description.bound["initial_entities"]
    declared = {a.bound["name"]: a for a in actions if isinstance(a, DeclareLaunchArgument)}
    env = {name: _resolve(a.bound["default_value"], {}) for name, a in declared.items()
           if a.bound["default_value"] is not None}
    env.update(overrides)
    nodes = []
    for action in actions:
        if not isinstance(action, Node):
            continue
        kw = action.bound
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
    assert declared["rig"].bound["choices"] == option["rig"].choices
    assert declared["backend"].bound["choices"] == option["backend"].choices
    assert declared["lens_driver"].bound["choices"] == option["lens_driver"].choices
    args = parser.parse_args(["--rig", rig])
    for node, spec in zip(launched, expected, strict=True):
        inline = {k: v for k, v in node["inline"].items() if k != "use_sim_time"}
        from_bringup = bringup.node_overrides(spec, args)
        for key, value in inline.items():
            assert str(from_bringup.get(key, "")) == value or key == "port", (spec.name, key)


def _launch_file_copy(tmp_path, good=None, bad=None):
    """The launch file's text in a temporary copy, with the first `good` replaced by `bad`."""
    text = LAUNCH_FILE.read_text()
    if good is not None:
        assert good in text, f"{good!r} no longer in {LAUNCH_FILE.name}; pick another keyword"
        text = text.replace(good, bad, 1)
    copy = tmp_path / LAUNCH_FILE.name
    copy.write_text(text)
    return copy


def test_unmodified_launch_file_copy_passes_the_stand_ins(monkeypatch, tmp_path):
    """The copy mechanism itself is not what makes the misspelling cases below fail."""
    description = _generate(_launch_file_copy(tmp_path), monkeypatch)
    actions = description.bound["initial_entities"]
    assert sum(isinstance(a, DeclareLaunchArgument) for a in actions) == 6
    assert [a.bound["name"] for a in actions if isinstance(a, Node)] == \
        ["focus_controller", "sim_rig", "all_in_focus"]


@pytest.mark.parametrize("good, bad", [
    ("default_value=", "defualt_value="),     # DeclareLaunchArgument's own keyword
    ("parameters=", "paramters="),            # Node's own keyword
    ("output=", "ouptut="),                   # forwarded by Node to ExecuteLocal
    ("condition=", "condtion="),              # forwarded by Node down to Action
])
def test_a_misspelled_keyword_in_the_launch_file_raises_type_error(monkeypatch, tmp_path, good, bad):
    """`ros2 launch` would crash on these; the stand-ins must too, naming the keyword."""
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{bad[:-1]}'"):
        _generate(_launch_file_copy(tmp_path, good, bad), monkeypatch)


def test_stand_ins_take_what_upstream_takes_and_nothing_else():
    """Spot checks of the forwarding chain Node -> ExecuteProcess -> ExecuteLocal -> Action."""
    node = Node(package="p", executable="e", name="n", namespace="ns", exec_name="x",
                remappings=[("a", "b")], arguments=["-v"], ros_arguments=["--log-level", "debug"],
                prefix="gdb", cwd="/", env={}, additional_env={}, shell=False, emulate_tty=True,
                output="both", output_format="{line}", cached_output=True, log_cmd=True,
                on_exit=None, respawn=True, respawn_delay=1.0, respawn_max_retries=3,
                sigterm_timeout="3", sigkill_timeout="3", condition=None)
    assert node.bound["respawn"] is True and node.bound["package"] == "p"
    for call, match in [
        (lambda: Node(package="p", name="n"), "missing 1 required keyword-only argument: 'executable'"),
        (lambda: Node("p", "e"), "positional argument"),
        (lambda: Node(executable="e", cmd=["ls"]), "multiple values for keyword argument 'cmd'"),
        (lambda: Node(executable="e", parameters={"a": 1}), "parameters must be a list"),
        (lambda: DeclareLaunchArgument("a", "b"), "positional argument"),
        (lambda: DeclareLaunchArgument("a", output="screen"), "unexpected keyword argument 'output'"),
        (lambda: SetEnvironmentVariable("A"), "missing 1 required positional argument: 'value'"),
        (lambda: LaunchConfiguration("a", "b"), "positional argument"),
        (lambda: LaunchDescription([], "why"), "positional argument"),
        (lambda: IfCondition(predicate=None), "unexpected keyword argument 'predicate'"),
    ]:
        with pytest.raises(TypeError, match=match):
            call()


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
