"""dinoseg: in-context (INSID3) and open-vocabulary segmentation on a frozen DINOv3 backbone."""

__version__ = "0.1.0"
