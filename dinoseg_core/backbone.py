"""The frozen DINOv3 ViT backbone: one loader for every place DINOv3 weights live.

``load_backbone(spec)`` accepts

- a preset name (``"dinov3-vitl16"``, ... see :data:`dinoseg_core.io.checkpoints.PRESETS`) or any Hugging Face hub
  id (``"facebook/dinov3-vitl16-pretrain-lvd1689m"``): loaded with ``from_pretrained``; the weights are gated,
  so this needs ``huggingface-cli login`` once (or ``HF_TOKEN``), and it uses the Hugging Face cache;
- a local Hugging Face model directory (``config.json`` + ``model.safetensors``);
- Meta's original checkpoint file (``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``), converted on the fly
  (:mod:`dinoseg_core.io.checkpoints`);
- either of the last two at an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...; ``file://`` is read in
  place): fetched once into a local cache, ``~/.cache/dinoseg/checkpoints/<sha256 of the URL>/`` (``cache_dir=``
  or ``$DINOSEG_CACHE_DIR`` move the root), and reused from there on every later load. The cache is not
  revalidated against the remote: delete that directory to fetch again;
- ``"random:<preset>[@seed]"`` (e.g. ``"random:dinov3-vits16@0"``, or ``"random:tiny"`` for a 2-block, 64-wide
  ViT): a seeded random initialisation of that exact architecture, for tests and demos only.

The model is always in eval mode with gradients off: in train mode transformers' DINOv3 randomly rescales the
RoPE coordinates (``pos_embed_rescale``), which would make features non-deterministic.

GPU settings: attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (transformers' ``"sdpa"``
implementation, enforced by the loader: flash / memory-efficient kernels on CUDA, no (T, T) attention matrix);
``dtype="bfloat16"`` (or ``"float16"``) keeps the weights in float32 and runs the forward under
``torch.autocast`` (matrix products in bf16, LayerNorm / softmax / the residual stream in float32); and
``compile=True`` (or :meth:`Backbone.compile`) wraps the model in ``torch.compile``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dinoseg_core.io.checkpoints import (
    PRESETS,
    RANDOM_ONLY_PRESETS,
    build_config,
    model_from_meta_state_dict,
    read_state_dict,
    reset_rope,
    resolve_preset,
)
from dinoseg_core.errors import CheckpointError, DinosegError, InputError, MissingDependencyError

if TYPE_CHECKING:
    from transformers import DINOv3ViTModel

__all__ = [
    "IMAGENET",
    "NORMALIZATIONS",
    "SAT493M",
    "Backbone",
    "Normalization",
    "architecture_of",
    "default_cache_dir",
    "fetch_to_cache",
    "fingerprint_model",
    "load_backbone",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """Per-channel RGB normalisation the weights were trained with: ``(x - mean) / std`` on [0, 1] pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: LVD-1689M (web images) weights: the ImageNet constants.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: SAT-493M (Maxar satellite) weights: Meta's constants for the satellite models.
SAT493M = Normalization((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))
NORMALIZATIONS: dict[str, Normalization] = {"imagenet": IMAGENET, "sat493m": SAT493M}

# Config fields that change what the network computes at inference. Init-only values (layerscale_value,
# initializer_range), training-only ones (drop_path_rate, pos_embed_*) and bookkeeping (transformers_version,
# _name_or_path, dtype) are left out so that the same weights give the same fingerprint from any format.
_ARCH_FIELDS = (
    "model_type", "patch_size", "num_channels", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "hidden_act", "layer_norm_eps", "rope_theta", "query_bias", "key_bias", "value_bias",
    "proj_bias", "mlp_bias", "use_gated_mlp", "num_register_tokens",
)

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Backbone:
    """A loaded, frozen DINOv3 ViT.

    Attributes:
        model: transformers ``DINOv3ViTModel``, eval mode, ``requires_grad`` False.
        spec: what the user passed to :func:`load_backbone`.
        source: where the weights were read from (hub id, local path, cached copy of a URL, or ``random:...``).
        fingerprint: sha256 hex of the architecture and every weight tensor (name, dtype, shape, bytes); equal
            for the same weights loaded from any format.
        normalization: mean/std the input pixels must be normalised with.
        is_random: True for ``random:`` specs.
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the forward under ``torch.autocast`` (the
            weights stay in their own dtype), or None for plain execution in the weights' dtype.
    """

    def __init__(self, model: DINOv3ViTModel, *, spec: str, fingerprint: str, normalization: Normalization,
                 is_random: bool = False, source: str | None = None, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.spec = spec
        self.source = source if source is not None else spec
        self.fingerprint = fingerprint
        self.normalization = normalization
        self.is_random = is_random
        self.autocast_dtype = autocast_dtype
        self._compiled: Callable[..., Any] | None = None

    @property
    def patch_size(self) -> int:
        """Side of one square patch in pixels (16 for every DINOv3 ViT)."""
        p = self.model.config.patch_size
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def embed_dim(self) -> int:
        """Feature dimension C of the tokens."""
        return int(self.model.config.hidden_size)

    @property
    def num_register_tokens(self) -> int:
        """Register (storage) tokens between the CLS token and the patch tokens (4 for Meta's weights)."""
        return int(self.model.config.num_register_tokens)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.patch_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (float32 also under bf16 autocast: see :attr:`compute_dtype`)."""
        return self.model.embeddings.patch_embeddings.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the forward's matrix products: :attr:`autocast_dtype` when set, else :attr:`dtype`."""
        return self.autocast_dtype or self.dtype

    @property
    def attention(self) -> str:
        """transformers' attention implementation (``"sdpa"`` after :func:`load_backbone`)."""
        return str(self.model.config._attn_implementation)

    @property
    def compiled(self) -> bool:
        """True once :meth:`compile` has wrapped the model in ``torch.compile``."""
        return self._compiled is not None

    def compile(self, mode: str | None = None, backend: str = "inductor") -> Backbone:
        """Run later forwards through ``torch.compile(model, mode=mode, backend=backend, dynamic=True)``.

        Compilation happens on the first forward of each new input shape (seconds to a minute for ViT-L); worth
        it for long runs on a GPU, rarely on the CPU (inductor also needs a C++ compiler there). ``dynamic=True``
        keeps a smaller last batch from recompiling. Features equal the eager ones to float rounding.

        Args:
            mode: ``torch.compile`` mode, e.g. ``"max-autotune"``; None for its default.
            backend: ``"inductor"`` (default) or any other ``torch.compile`` backend (``"eager"`` only traces).
        Returns:
            this backbone.
        """
        self._compiled = torch.compile(self.model, mode=mode, backend=backend, dynamic=True)
        return self

    def __repr__(self) -> str:
        cfg = self.model.config
        autocast = f", autocast={self.autocast_dtype}" if self.autocast_dtype is not None else ""
        return (f"Backbone(spec={self.spec!r}, {cfg.num_hidden_layers} blocks x {cfg.hidden_size}, "
                f"patch {self.patch_size}, device={self.device}, dtype={self.dtype}{autocast}, "
                f"attention={self.attention}, compiled={self.compiled}, "
                f"fingerprint={self.fingerprint[:12]}..., random={self.is_random})")

    def forward_tokens(
        self, pixels: torch.Tensor, *, full_precision: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone on normalised pixels.

        Args:
            pixels: (B, 3, H, W) float tensor, already normalised with :attr:`normalization`; H and W multiples
                of :attr:`patch_size`. Any device/float dtype: it is moved to the model's.
            full_precision: run in the weights' dtype even when :attr:`autocast_dtype` is set (the positional
                basis needs it: its signal is a small variation that bf16 rounding drowns).

        Returns:
            ``(cls, patches)``: cls (B, C) and patches (B, C, H/p, W/p), the output of the final LayerNorm
            (not L2-normalised), float32, on :attr:`device`. Ordinary tensors (not inference tensors), so
            callers may modify them in place.

        Raises:
            InputError: ``pixels`` is not a float (B, 3, H, W) tensor with H, W positive multiples of the patch size.
        """
        self._check_pixels(pixels, "forward_tokens")
        b, _, h, w = pixels.shape
        p = self.patch_size
        start = 1 + self.num_register_tokens
        with torch.inference_mode():
            tokens = self._final_tokens(pixels, full_precision)  # (B, 1 + R + h*w, C), after the final norm
            cls = tokens[:, 0]
            patches = tokens[:, start:].reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)
        # Copies made outside inference mode are ordinary tensors.
        return (cls.to(torch.float32, copy=True),
                patches.to(torch.float32, memory_format=torch.contiguous_format, copy=True))

    def forward_all_tokens(self, pixels: torch.Tensor, *, full_precision: bool = False) -> torch.Tensor:
        """Every token of the final LayerNorm, registers included: ``[CLS, registers, patches]``.

        :meth:`forward_tokens` drops the registers; heads trained on the whole sequence (dino.txt's vision head)
        need them.

        Args:
            pixels, full_precision: as for :meth:`forward_tokens`.

        Returns:
            float32 (B, 1 + R + H/p * W/p, C) on :attr:`device`, patches in row-major order; computed in inference
            mode and returned as an ordinary tensor (a copy), so it may feed a trainable head.

        Raises:
            InputError: as for :meth:`forward_tokens`.
        """
        self._check_pixels(pixels, "forward_all_tokens")
        with torch.inference_mode():
            tokens = self._final_tokens(pixels, full_precision)
        return tokens.to(torch.float32, copy=True)

    def _final_tokens(self, pixels: torch.Tensor, full_precision: bool) -> torch.Tensor:
        if self.model.training:  # someone called .train(): RoPE would be jittered randomly
            logger.warning("Backbone model was in train mode; switching it back to eval mode.")
            self.model.eval()
        model = self._compiled if self._compiled is not None else self.model
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None and not full_precision else nullcontext())
        with autocast:
            return model(pixel_values=pixels.to(device=self.device, dtype=self.dtype)).last_hidden_state

    def _check_pixels(self, pixels: torch.Tensor, caller: str) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise InputError(f"{caller} expects a torch.Tensor (B, 3, H, W), got {type(pixels).__name__}.")
        channels = int(self.model.config.num_channels)
        if pixels.ndim != 4 or pixels.shape[1] != channels:
            raise InputError(
                f"{caller} expects pixels of shape (B, {channels}, H, W), got {tuple(pixels.shape)}; add a "
                "batch dimension with pixels[None] or move channels first with .permute(2, 0, 1)."
            )
        if not pixels.is_floating_point():
            raise InputError(f"{caller} expects normalised float pixels, got dtype {pixels.dtype}; convert "
                             "to float in [0, 1] and normalise with backbone.normalization first.")
        b, _, h, w = pixels.shape
        p = self.patch_size
        if b == 0 or h == 0 or w == 0 or h % p or w % p:
            fit = (max(p, -(-h // p) * p), max(p, -(-w // p) * p))
            raise InputError(
                f"{caller} expects a non-empty batch with H and W multiples of the patch size {p}, got "
                f"B={b}, H={h}, W={w}; resize or pad to e.g. {fit[0]}x{fit[1]}."
            )

    @property
    def num_heads(self) -> int:
        """Attention heads of the ViT's blocks."""
        return int(self.model.config.num_attention_heads)


# --------------------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------------------

def architecture_of(config: Any) -> dict[str, Any]:
    """The inference-relevant architecture fields of a ``DINOv3ViTConfig`` as plain JSON values."""
    arch = {}
    for name in _ARCH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            value = int(value[0]) if len(set(value)) == 1 else [int(v) for v in value]
        elif isinstance(value, float) and value.is_integer():
            value = float(value)
        arch[name] = value
    return arch


def fingerprint_model(model: DINOv3ViTModel) -> str:
    """sha256 hex over the architecture JSON and every state-dict tensor's name, dtype, shape and bytes.

    Cost: one pass over the weights, about 0.5 s per GB here (ViT-L fp32 ~1.2 GB: ~1 s with the copy to CPU;
    ViT-7B fp32 ~27 GB: ~15-30 s), paid once per load. Tensor names are transformers' parameter names, so a
    transformers release that renames parameters changes fingerprints (which only invalidates caches).
    """
    digest = hashlib.sha256(b"dinoseg-backbone-fingerprint-v1\n")
    digest.update(json.dumps(architecture_of(model.config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        digest.update(f"\n{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise InputError(f"dtype={dtype!r} is not supported; use 'float32' (default), 'bfloat16'/'bf16' or 'float16'.")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} was requested but CUDA is not available here; pass device='cpu'.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device={device!r} was requested but MPS is not available here; pass device='cpu'.")
    return resolved


def _resolve_normalization(normalization: Normalization | str | None, default: Normalization) -> Normalization:
    if normalization is None:
        return default
    if isinstance(normalization, Normalization):
        return normalization
    if isinstance(normalization, str) and normalization.strip().lower() in NORMALIZATIONS:
        return NORMALIZATIONS[normalization.strip().lower()]
    raise InputError(f"normalization={normalization!r} is not known; use one of {sorted(NORMALIZATIONS)} or a "
                     "Normalization(mean=(r, g, b), std=(r, g, b)).")


def _normalization_for(*names: str) -> Normalization:
    """SAT-493M constants when any of ``names`` mentions the satellite weights, else ImageNet's."""
    return SAT493M if any("sat493m" in (n or "").lower() for n in names) else IMAGENET


def default_cache_dir() -> str:
    """Root of dinoseg's download cache: ``$DINOSEG_CACHE_DIR``, else ``~/.cache/dinoseg``."""
    return os.environ.get("DINOSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dinoseg")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------

def _accepted_specs() -> str:
    return (f"a preset ({', '.join(PRESETS)}), a Hugging Face hub id 'org/name', a local Hugging Face model "
            "directory (config.json + model.safetensors), Meta's .pth checkpoint file, either of those at an fsspec "
            "URL (s3://, memory://, file://, ...), or 'random:<preset>[@seed]'")



def load_backbone(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    normalization: Normalization | str | None = None,
    compile: bool = False,
) -> Backbone:
    """Load a frozen DINOv3 ViT (see the module docstring for every accepted ``spec``).

    Args:
        spec: preset name, hub id, local HF directory, Meta checkpoint file, fsspec URL of either, or
            ``random:<preset>[@seed]`` (seed defaults to 0).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: compute dtype: ``float32`` (default), ``bfloat16``/``"bf16"`` or ``float16``. The reduced ones keep
            the weights in float32 and run the forward under ``torch.autocast`` (patch features within cosine
            0.999 of float32's); on the CPU they are slower than float32 (a warning is logged). The fingerprint
            is that of the float32 weights, whatever the dtype.
        storage_options: fsspec options for URL specs (credentials, ``endpoint_url``, ...).
        cache_dir: root of the download cache for URL specs (default :func:`default_cache_dir`).
        normalization: override the mean/std that follow the weights (``"imagenet"``, ``"sat493m"`` or a
            :class:`Normalization`). By default SAT-493M presets and checkpoints whose name contains
            ``sat493m`` get :data:`SAT493M`, everything else :data:`IMAGENET`.
        compile: wrap the model in ``torch.compile`` (:meth:`Backbone.compile` with its defaults).

    Returns:
        A :class:`Backbone` in eval mode with gradients off on ``device``, attention through SDPA.

    Raises:
        CheckpointError: the spec cannot be resolved, the weights are gated/unreachable, or the checkpoint is
            missing, unreadable or not a DINOv3 ViT; the message names the spec/path and what was expected.
        InputError: bad ``device``, ``dtype`` or ``normalization``.
        MissingDependencyError: the URL's fsspec backend (e.g. ``s3fs``) is not installed.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(f"Backbone spec {spec!r} is empty or not a string; expected {_accepted_specs()}.")
    spec = spec.strip()
    target_device = _resolve_device(device)
    target_dtype = _resolve_dtype(dtype)
    if target_dtype != torch.float32 and target_device.type == "cpu":
        logger.warning("Backbone dtype %s on the CPU is much slower than float32 and less accurate; it is allowed, "
                       "but prefer float32 on the CPU.", str(target_dtype).removeprefix("torch."))
    started = time.perf_counter()

    is_random = False
    if spec.lower().startswith("random:"):
        model, source, default_norm = _load_random(spec)
        is_random = True
    elif (preset := resolve_preset(spec)) is not None:
        assert preset.hub_id is not None
        model = _load_hf(preset.hub_id, shown=f"{spec} ({preset.hub_id})", local=False, dtype=torch.float32)
        source, default_norm = preset.hub_id, NORMALIZATIONS[preset.normalization]
    elif "://" in spec or "::" in spec:
        local_path, source = _localise_url(spec, storage_options, cache_dir)
        model = _load_local(local_path, shown=source, dtype=torch.float32)
        default_norm = _normalization_for(spec, local_path)
    elif os.path.exists(os.path.expanduser(spec)):
        source = os.path.abspath(os.path.expanduser(spec))
        model = _load_local(source, shown=spec, dtype=torch.float32)
        default_norm = _normalization_for(source)
    elif _HUB_ID.match(spec) and not spec.lower().endswith(_CHECKPOINT_SUFFIXES):
        model = _load_hf(spec, shown=spec, local=False, dtype=torch.float32)
        source, default_norm = spec, _normalization_for(spec)
    else:
        raise CheckpointError(f"{spec}: no such file or directory, and not a known backbone name. Expected "
                              f"{_accepted_specs()}.")

    norm = _resolve_normalization(normalization, default_norm)
    # reduced precision is autocast over float32 weights: LayerNorm, softmax and the residual stream stay float32
    autocast_dtype = None if target_dtype == torch.float32 else target_dtype
    fingerprint = _finalize(model, torch.float32)
    model.to(target_device)
    backbone = Backbone(model, spec=spec, fingerprint=fingerprint, normalization=norm, is_random=is_random,
                        source=source, autocast_dtype=autocast_dtype)
    if compile:
        backbone.compile()
    logger.info("Loaded DINOv3 backbone %s from %s in %.1f s (%s).", spec, source, time.perf_counter() - started,
                backbone)
    return backbone


def _finalize(model: DINOv3ViTModel, dtype: torch.dtype) -> str:
    """Cast, freeze, switch attention to SDPA, and fingerprint the model (on the CPU, before it moves)."""
    model.to(dtype=dtype)
    reset_rope(model)
    model.eval()
    model.requires_grad_(False)
    if model.config._attn_implementation != "sdpa":  # e.g. a config that asked for "eager"
        model.set_attn_implementation("sdpa")
    return fingerprint_model(model)


def _load_random(spec: str) -> tuple[DINOv3ViTModel, str, Normalization]:
    from transformers import DINOv3ViTModel

    match = re.fullmatch(r"random:([^@]+?)(?:@(-?\d+))?", spec, flags=re.IGNORECASE)
    preset = resolve_preset(match.group(1), allow_random_only=True) if match else None
    if preset is None:
        raise CheckpointError(
            f"{spec}: expected 'random:<preset>[@seed]' with a preset among "
            f"{', '.join([*PRESETS, *RANDOM_ONLY_PRESETS])} and an integer seed, e.g. 'random:dinov3-vits16@0'."
        )
    seed = int(match.group(2)) if match.group(2) is not None else 0
    logger.warning(
        "RANDOM WEIGHTS: backbone %r is a random initialisation of %s (seed %d), not trained DINOv3 weights. Its "
        "features are meaningless on real images; use it only for tests and demos.", spec, preset.name, seed,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = DINOv3ViTModel(build_config(preset.config_kwargs))
    return model, f"random:{preset.name}@{seed}", NORMALIZATIONS[preset.normalization]


def _gated_hint(hub_id: str) -> str:
    return (f"DINOv3 weights are gated: accept the licence at https://huggingface.co/{hub_id}, then run "
            "`huggingface-cli login` (`hf auth login` in recent huggingface_hub) or set HF_TOKEN; or pass a local "
            "path instead (a Hugging Face model directory with config.json + model.safetensors, or Meta's .pth file).")


def _load_hf(source: str, *, shown: str, local: bool, dtype: torch.dtype) -> DINOv3ViTModel:
    """``from_pretrained`` for a hub id (``local=False``) or a local directory, with every key checked."""
    from transformers import DINOv3ViTModel, PretrainedConfig

    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, local_files_only=local)
    except Exception as exc:
        if local:
            raise CheckpointError(f"{shown}: cannot read config.json ({type(exc).__name__}: {exc}). Expected a "
                                  "Hugging Face DINOv3 model directory (config.json + model.safetensors).") from exc
        no_local = "" if "/" not in source or source.startswith("facebook/") else (
            f" No local file or directory '{source}' exists either.")
        raise CheckpointError(f"{shown}: could not load from the Hugging Face Hub ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).{no_local} "
                              f"{_gated_hint(source)}") from exc
    model_type = config_dict.get("model_type")
    if model_type != "dinov3_vit":
        raise CheckpointError(f"{shown}: config.json has model_type {model_type!r}, expected 'dinov3_vit' (a DINOv3 "
                              "ViT; the ConvNeXt variants are not supported).")
    try:
        model, info = DINOv3ViTModel.from_pretrained(source, dtype=dtype, output_loading_info=True,
                                                     local_files_only=local)
    except Exception as exc:
        hint = _gated_hint(source) if not local else ("Expected a Hugging Face DINOv3 model directory "
                                                      "(config.json + model.safetensors).")
        raise CheckpointError(f"{shown}: could not load the weights ({type(exc).__name__}: "
                              f"{str(exc).strip()[:500]}). {hint}") from exc
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            raise CheckpointError(f"{shown}: {kind.replace('_', ' ')} {', '.join(keys[:8])}"
                                  f"{' ...' if len(keys) > 8 else ''}; expected the complete weights of the "
                                  "DINOv3 ViT described by its config.json.")
    return model


def _load_local(path: str, *, shown: str, dtype: torch.dtype) -> DINOv3ViTModel:
    """A local Hugging Face directory or Meta checkpoint file (any other single file is rejected)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(f"{shown}: directory has no config.json. Expected a Hugging Face DINOv3 model "
                                  "directory (config.json + model.safetensors) or Meta's .pth checkpoint file.")
        return _load_hf(path, shown=shown, local=True, dtype=dtype)
    state = read_state_dict(path, shown)
    model, named = model_from_meta_state_dict(state, filename=os.path.basename(path), display=shown)
    logger.info("Converted Meta checkpoint %s (%s).", shown, f"architecture {named} from the file name" if named
                else "architecture read off the tensors")
    return model


# --------------------------------------------------------------------------------------------------------------
# Remote checkpoints
# --------------------------------------------------------------------------------------------------------------

_MANIFEST = "dinoseg-source.json"
_HF_FILE = re.compile(r"(\.json|\.safetensors|\.bin)$")


def fetch_to_cache(
    url: str,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    expected: str | None = None,
    directory_files: Callable[[list[str]], list[str]] | None = None,
) -> str:
    """A local path holding what the fsspec ``url`` points at: the path itself for local URLs (``file://``, no
    chaining), else a copy fetched once into the download cache and reused from there on every later call.

    The copy lives in ``<cache_dir>/checkpoints/<sha256 of the URL>/`` (``cache_dir`` defaults to
    :func:`default_cache_dir`), published with one atomic rename, so concurrent callers never see a partial copy
    and the first to finish wins. The cache is not revalidated against the remote: delete that directory to
    fetch again.

    Args:
        url: fsspec URL of a file, or of a directory when ``directory_files`` is given.
        storage_options: fsspec options (credentials, ``endpoint_url``, ...).
        cache_dir: root of the download cache.
        expected: what the URL should hold, appended to error messages ("Expected <expected>.").
        directory_files: for a directory URL, receives the names of its files (not recursive) and returns those
            to fetch, or raises :class:`CheckpointError` naming what is missing; without it a directory is an
            error.

    Returns:
        The local path: the file, or the local copy of the directory.

    Raises:
        CheckpointError: nothing at ``url``, unreachable storage, a refused directory, or a failed download.
        MissingDependencyError: the URL's fsspec backend (e.g. ``s3fs``) is not installed.
    """
    from dinoseg_core.io import storage

    shown = storage.display_url(url)
    hint = f" Expected {expected}." if expected else ""
    try:
        fs, path = storage.url_to_fs(url, storage_options)
    except MissingDependencyError:
        raise
    except DinosegError as exc:
        raise CheckpointError(f"{shown}: cannot open its storage ({exc}).{hint}") from exc
    if "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)) and "::" not in url:
        if not os.path.exists(path):
            raise CheckpointError(f"{shown}: no such file or directory.{hint}")
        return path

    root = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    final = os.path.join(root, "checkpoints", key)
    manifest = os.path.join(final, _MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as fh:
            entry = json.load(fh)
        logger.info("Using cached copy of %s at %s.", shown, final)
        return os.path.join(final, entry["local"])

    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{shown}: no such object.{hint}") from exc
    except Exception as exc:
        raise CheckpointError(f"{shown}: cannot reach it ({type(exc).__name__}: {exc}).") from exc

    tmp = os.path.join(root, "checkpoints", f".{key}.{uuid.uuid4().hex}.tmp")
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    try:
        if info.get("type") == "directory":
            if directory_files is None:
                raise CheckpointError(f"{shown}: is a directory; expected a file.{hint}")
            entries = [e for e in fs.ls(path, detail=True) if e.get("type") != "directory"]
            names = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["name"] for e in entries}
            local_name = "model"
            os.makedirs(os.path.join(tmp, local_name))
            for name in directory_files(sorted(names)):
                fs.get_file(names[name], os.path.join(tmp, local_name, name))
        else:
            local_name = path.rstrip("/").rsplit("/", 1)[-1] or "checkpoint.pth"
            fs.get_file(path, os.path.join(tmp, local_name))
        with open(os.path.join(tmp, _MANIFEST), "w") as fh:
            json.dump({"url": shown, "local": local_name}, fh)
        try:
            os.replace(tmp, final)  # atomic publish; readers never see a partial copy
        except OSError:
            if not os.path.isfile(manifest):  # not a concurrent loader that won the race
                raise
    except DinosegError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{shown}: download failed ({type(exc).__name__}: {exc}).") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Fetched %s into %s in %.1f s.", shown, final, time.perf_counter() - started)
    return os.path.join(final, local_name)


def _hf_directory_files(shown: str) -> Callable[[list[str]], list[str]]:
    """The files of a remote Hugging Face model directory worth fetching; refuses one without config.json."""

    def select(names: list[str]) -> list[str]:
        if "config.json" not in names:
            raise CheckpointError(
                f"{shown}: directory has no config.json (found: {', '.join(names[:8]) or 'nothing'}). "
                "Expected a Hugging Face DINOv3 model directory (config.json + model.safetensors) or Meta's "
                ".pth checkpoint file."
            )
        return [name for name in names if _HF_FILE.search(name)]

    return select


def _localise_url(url: str, storage_options: dict[str, Any] | None,
                  cache_dir: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(local path, URL as shown in messages) of a backbone at a URL (:func:`fetch_to_cache`)."""
    from dinoseg_core.io import storage

    shown = storage.display_url(url)
    local = fetch_to_cache(url, storage_options, cache_dir, expected=_accepted_specs(),
                           directory_files=_hf_directory_files(shown))
    return local, shown
