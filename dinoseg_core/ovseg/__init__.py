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

from dinoseg_core.ovseg.classes import concept_names, validate_class_names
from dinoseg_core.ovseg.config import (
    DEFAULT_TEMPLATES,
    PAPER_MIOU,
    HeadOptions,
    OvsegConfig,
    OvsegOptions,
    SegHeadConfig,
    TrainConfig,
    TrainOptions,
)
from dinoseg_core.ovseg.data import ArraySegDataset, SegDataset, read_class_table
from dinoseg_core.ovseg.dinotxt import ClassEmbeddings, DinoTxt, backbone_tokens, load_dinotxt
from dinoseg_core.ovseg.evaluate import EvalResult, evaluate
from dinoseg_core.ovseg.model import SegHead, SegModel
from dinoseg_core.ovseg.segmenter import TextSegmentation, TextSegmenter
from dinoseg_core.ovseg.tokenizer import ClipTokenizer, load_tokenizer
from dinoseg_core.ovseg.train import TrainResult, loss_curve, train
from dinoseg_core.ovseg.windows import sliding_windows, window_starts

__all__ = [
    "DEFAULT_TEMPLATES",
    "PAPER_MIOU",
    "ArraySegDataset",
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
