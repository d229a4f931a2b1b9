"""efs_ros: all-in-focus imaging and depth from an event focal stack."""
__version__ = "0.1.0"
