"""dinoseg: in-context (INSID3) and open-vocabulary segmentation on a frozen DINOv3 backbone."""

import os

# OpenMP threads that wait for work sleep instead of spinning. A spinning team steals the cores from any other
# process on the machine (and from our own I/O threads): beside one busy torch process, a ViT-S forward took 4-5 s
# instead of 0.34 s. It must be set before torch loads its OpenMP runtime, hence here; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
