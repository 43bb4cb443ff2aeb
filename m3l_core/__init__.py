"""M3L core: Linear Fusion SegFormer, the M3L trainer, datasets, metrics and inference. No ROS imports."""
__version__ = "0.1.0"
