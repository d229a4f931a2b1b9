"""The efs_ros node graph, in one place: what `launch/sweep.launch.py` starts on a real ROS
install and what `efs_bringup` starts in one process here. A test checks the two agree."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    node_class: str
    """module:Class, constructible as Class(parameter_overrides=[...])."""
    params_file: str
    rigs: tuple[str, ...] = ("sim", "real")

    def load_class(self):
        module, cls = self.node_class.split(":")
        return getattr(importlib.import_module(module), cls)


GRAPH: tuple[NodeSpec, ...] = (
    NodeSpec("focus_controller", "focus_controller",
             "efs_ros.nodes.focus_controller:FocusControllerNode", "focus_controller.yaml"),
    NodeSpec("sim_rig", "sim_rig", "efs_ros.nodes.sim_rig:SimRigNode", "sim_rig.yaml", rigs=("sim",)),
    NodeSpec("all_in_focus", "all_in_focus",
             "efs_ros.nodes.all_in_focus:AllInFocusNode", "all_in_focus.yaml"),
)


def nodes_for(rig: str) -> list[NodeSpec]:
    if rig not in ("sim", "real"):
        raise ValueError(f"rig must be 'sim' or 'real', not {rig!r}")
    return [spec for spec in GRAPH if rig in spec.rigs]


def load_node_parameters(path: Path, node_name: str) -> dict:
    """Parameters for one node from a ROS 2 params YAML (`name:` or `/**:` sections)."""
    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a ROS 2 parameters file (top level is not a mapping)")
    params: dict = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = doc.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ValueError(f"{path}: section {key!r} has no ros__parameters")
        params.update(_flatten(section["ros__parameters"] or {}))
    return params


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
