"""Focal-sweep simulator: scenes, thin-lens defocus, event sensor models, and the sweep rig."""
from .optics import FocalRenderer, ThinLens, disk_kernel, luminance, render, render_many
from .rig import (
    RigConfig,
    SimulatedRecording,
    SimulatedSweep,
    exposure_weights,
    simulate_recording,
    simulate_sweep,
)
from .scene import SCENE_KINDS, Scene, fronto_scene, make_scene, random_mask, sample_texture, texture_pool
from .sensor import SENSOR_MODELS, EventSensor, SensorConfig, lin_log, simulate_events

__all__ = [
    "SCENE_KINDS", "SENSOR_MODELS", "EventSensor", "FocalRenderer", "RigConfig", "Scene", "SensorConfig",
    "SimulatedRecording", "SimulatedSweep", "ThinLens", "disk_kernel", "exposure_weights", "fronto_scene",
    "lin_log", "luminance", "make_scene", "random_mask", "render", "render_many", "sample_texture",
    "simulate_events", "simulate_recording", "simulate_sweep", "texture_pool",
]
