"""Open-vocabulary segmentation on DINOv3: dino.txt zero-shot and the trainable dinov3.seg head.

Segment classes *named in text* ("building", "solar panel", "flooded field"). Modules, in pipeline order:

- :mod:`~dinoseg_core.ovseg.tokenizer`: CLIP's BPE (transformers' ``CLIPTokenizer`` over CLIP's merges file);
- :mod:`~dinoseg_core.ovseg.towers`: the dino.txt vision head and text tower (Meta's module names);
- :mod:`~dinoseg_core.ovseg.dinotxt`: :func:`load_dinotxt` (Meta's checkpoint key by key, or ``random:``) and
  :class:`DinoTxt` (image tokens, text features, class embeddings with a prompt ensemble);
- :mod:`~dinoseg_core.ovseg.windows`: resize, sliding windows + global view, aggregation;
- :mod:`~dinoseg_core.ovseg.zeroshot`: patch-text cosine logits with a CLS prior;
- :mod:`~dinoseg_core.ovseg.model`: the dinov3.seg head (early refinement, correlation volume, spatial and class
  aggregation, upsampling decoder) and its safetensors checkpoints;
- :mod:`~dinoseg_core.ovseg.segmenter`: :class:`TextSegmenter`, one image in, a label map out;
- :mod:`~dinoseg_core.ovseg.data`, :mod:`~dinoseg_core.ovseg.train`, :mod:`~dinoseg_core.ovseg.evaluate`:
  datasets (folder, COCO-Stuff), the training loop, mIoU.

What is validated without Meta's weights (tests, random towers): tokenizer round trips against CLIP's algorithm,
the checkpoint key mapping and forward pass against an independent re-implementation of Meta's modules, window
arithmetic, output shapes, and that the head learns on synthetic data (loss falls, mIoU rises). What needs the
real weights: every mIoU figure. For reference, the dinov3.seg description reports (mIoU %) A-847 20.1,
PC-459 27.8, A-150 42.2, PC-59 64.3, PAS-20 97.9, against CAT-Seg ViT-L's 16.0 / 23.8 / 37.9 / 63.3 / 97.0
(:data:`~dinoseg_core.ovseg.config.PAPER_MIOU`); nothing here reproduces them yet.
"""

import importlib
import sys
import types
from typing import Any

from dinoseg_core.ovseg.classes import concept_names, validate_class_names
from dinoseg_core.ovseg.config import (
    DEFAULT_TEMPLATES,
    IMAGENET_TEMPLATES,
    PAPER_MIOU,
    RECIPES,
    HeadOptions,
    OvsegConfig,
    OvsegOptions,
    SegHeadConfig,
    TrainConfig,
    TrainOptions,
)

# The torch modules load on first use, so that the command line builds its options from the configs above
# (``dinoseg label-text --help``) without importing torch.
_LAZY = {
    "ArraySegDataset": "data", "SegDataset": "data", "read_class_table": "data",
    "ClassEmbeddings": "dinotxt", "DinoTxt": "dinotxt", "backbone_tokens": "dinotxt", "load_dinotxt": "dinotxt",
    "EvalResult": "evaluate", "evaluate": "evaluate",
    "CatSegHead": "model", "SegHead": "model", "SegModel": "model", "build_head": "model",
    "TextSegmentation": "segmenter", "TextSegmenter": "segmenter",
    "ClipTokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "TrainResult": "train", "loss_curve": "train", "train": "train",
    "sliding_windows": "windows", "window_starts": "windows",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule ``train`` (``evaluate``) binds it on the package, where the name means the
        # function of the same name.
        if name in _LAZY and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "DEFAULT_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "PAPER_MIOU",
    "RECIPES",
    "ArraySegDataset",
    "CatSegHead",
    "ClassEmbeddings",
    "ClipTokenizer",
    "DinoTxt",
    "EvalResult",
    "HeadOptions",
    "OvsegConfig",
    "OvsegOptions",
    "SegDataset",
    "SegHead",
    "SegHeadConfig",
    "SegModel",
    "TextSegmentation",
    "TextSegmenter",
    "TrainConfig",
    "TrainOptions",
    "TrainResult",
    "backbone_tokens",
    "build_head",
    "concept_names",
    "evaluate",
    "load_dinotxt",
    "load_tokenizer",
    "loss_curve",
    "read_class_table",
    "sliding_windows",
    "train",
    "validate_class_names",
    "window_starts",
]
