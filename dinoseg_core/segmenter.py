"""INSID3 end to end, in stage order: extract -> debias -> candidates -> cluster -> aggregate -> refine.

Usage::

    segmenter = InContextSegmenter(load_backbone("dinov3-vitl16"), InsidConfig())
    refs = segmenter.embed_references([ref_image], [ref_mask])      # once
    for image in targets:
        result = segmenter.segment(refs, image)                      # result.mask: bool (H, W)

Images are float32 (H, W, 3) in [0, 1], masks bool (H, W). Nothing is kept between calls except the positional
basis cache, so one segmenter serves any number of reference sets and targets (and threads, for reading).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dinoseg_core.aggregate import aggregate, score_clusters
from dinoseg_core.basis import BasisCache, PositionalBasis
from dinoseg_core.candidates import localise_candidates
from dinoseg_core.cluster import ClusterBackend, agglomerative_clusters, resolve_cluster_backend
from dinoseg_core.config import InsidConfig
from dinoseg_core.correspondence import match_keypoints
from dinoseg_core.debias import debias
from dinoseg_core.errors import DinosegError, InputError
from dinoseg_core.features import flatten_grid, patch_features
from dinoseg_core.preprocess import input_size, prepare_image, prepare_mask, resize_mask, validate_image
from dinoseg_core.prototype import ReferenceSet, ReferenceShot, compute_prototype, mask_to_patches
from dinoseg_core.refine import crf_refine, upsample_patch_mask

#: Config fields that change the features themselves; the others (tau, merge_threshold, crf) may differ
#: per concept on features extracted once.
FEATURE_FIELDS = ("image_size", "svd_components", "basis_source", "resize_mode")


@dataclass
class TargetFeatures:
    """One target image after a single backbone pass; reusable for any number of concepts.

    Attributes:
        features: (N, C) unit patch features (N = h*w).
        features_debiased: (N, C).
        grid: (h, w) patch grid.
        input_hw: (H', W') backbone input size.
        original_hw: (H, W) of the image.
        image_resized: uint8 (H', W', 3), kept for CRF refinement.
        timings: seconds spent on the backbone and the basis for this target.
    """

    features: torch.Tensor
    features_debiased: torch.Tensor
    grid: tuple[int, int]
    input_hw: tuple[int, int]
    original_hw: tuple[int, int]
    image_resized: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    _clusters: dict[tuple[float, str], np.ndarray] = field(default_factory=dict, repr=False)

    def clusters(self, tau: float, backend: ClusterBackend = "auto") -> np.ndarray:
        """Cluster labels (N,) at threshold ``tau``, computed once per tau and backend.

        Args:
            tau: similarity threshold (step 7).
            backend: ``"scipy"``, ``"torch"`` or ``"auto"`` (:func:`~dinoseg_core.cluster.agglomerative_clusters`);
                the partitions are the same, only where and how fast they are computed differs.
        """
        key = (tau, resolve_cluster_backend(backend, self.features.device))
        if key not in self._clusters:
            self._clusters[key] = agglomerative_clusters(self.features, tau, backend=key[1])
        return self._clusters[key]


@dataclass(frozen=True)
class Segmentation:
    """The result for one target and one concept.

    Attributes:
        mask: bool (H, W) at the target's original size.
        similarity: float32 (h, w), cosine of each debiased target patch with the prototype.
        patch_mask: bool (h, w), the aggregated clusters on the patch grid.
        timings: seconds per stage (backbone, basis, matching, clustering, aggregation, crf).
    """

    mask: np.ndarray
    similarity: np.ndarray
    patch_mask: np.ndarray
    timings: dict[str, float]


class InContextSegmenter:
    """Training-free in-context segmentation (INSID3) on an injected DINOv3 backbone.

    Args:
        backbone: a loaded :class:`dinoseg_core.backbone.Backbone`; its device is used for all tensor work.
        config: the method's hyper-parameters (paper defaults).
        basis_cache: share one cache between segmenters of the same backbone, or pre-load saved bases.
        cluster_backend: where step 7 runs: ``"scipy"`` (CPU), ``"torch"`` (the features' device) or ``"auto"``
            (torch on CUDA, scipy on the CPU). Not part of the config: every backend gives the same partition
            (:mod:`dinoseg_core.cluster`), so masks and config digests do not depend on it.
        batch_size: images per backbone forward when several targets are extracted at once
            (:func:`dinoseg_core.features.auto_batch_size` sizes it from free GPU memory).
    """

    def __init__(self, backbone, config: InsidConfig | None = None, basis_cache: BasisCache | None = None,
                 cluster_backend: ClusterBackend = "auto", batch_size: int = 8):
        resolve_cluster_backend(cluster_backend, "cpu")  # an unknown name fails here, not on the first target
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: give at least 1 image per backbone forward")
        self.backbone = backbone
        self.cluster_backend = cluster_backend
        self.batch_size = batch_size
        self.config = config or InsidConfig()
        self.k = self.config.resolved_svd_components(backbone.embed_dim)
        self.basis_cache = basis_cache or BasisCache()

    # -- positional basis -------------------------------------------------------------------------------------
    def basis(self, size_hw: tuple[int, int] | None = None) -> PositionalBasis:
        """The positional basis for an input size (default: the square configured size), computed once."""
        size_hw = size_hw or (self.config.image_size, self.config.image_size)
        return self.basis_cache.get(self.backbone, size_hw, self.config.basis_source, self.k)

    def add_basis(self, basis: PositionalBasis) -> None:
        """Use a saved basis; it must come from this backbone (same fingerprint) and this config's k/source."""
        key = basis.key
        if key.backbone_fingerprint != self.backbone.fingerprint:
            raise InputError(
                "positional basis was computed for another backbone "
                f"(fingerprint {key.backbone_fingerprint[:12]}, loaded backbone {self.backbone.fingerprint[:12]}); "
                "recompute it for this backbone"
            )
        if (key.k, key.source) != (self.k, self.config.basis_source):
            raise InputError(
                f"positional basis has k={key.k}, source={key.source!r}; the config asks for k={self.k}, "
                f"source={self.config.basis_source!r}"
            )
        self.basis_cache.add(basis)

    # -- extraction ---------------------------------------------------------------------------------------------
    def _input_hw(self, image: np.ndarray) -> tuple[int, int]:
        return input_size(*image.shape[:2], self.config.image_size, self.config.resize_mode, self.backbone.patch_size)

    def _extract(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[TargetFeatures]:
        """One backbone pass per group of equally sized inputs; debias each with the basis of its size."""
        results: list[TargetFeatures | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (image, name) in enumerate(zip(images, names)):
            validate_image(image, name, self.backbone.patch_size)
            groups.setdefault(self._input_hw(image), []).append(index)
        norm = self.backbone.normalization
        for size_hw, indices in groups.items():
            start = time.perf_counter()
            basis = self.basis(size_hw).vectors
            basis_seconds = time.perf_counter() - start
            start = time.perf_counter()
            pixels = torch.stack(
                [prepare_image(images[i], size_hw, norm.mean, norm.std, self.backbone.device) for i in indices]
            )
            features = patch_features(self.backbone, pixels, self.batch_size)
            backbone_seconds = (time.perf_counter() - start) / len(indices)
            for j, i in enumerate(indices):
                flat = flatten_grid(features[j])
                mean = torch.tensor(norm.mean, device=pixels.device).view(3, 1, 1)
                std = torch.tensor(norm.std, device=pixels.device).view(3, 1, 1)
                resized = ((pixels[j] * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
                results[i] = TargetFeatures(
                    features=flat,
                    features_debiased=debias(flat, basis),
                    grid=tuple(features.shape[-2:]),
                    input_hw=size_hw,
                    original_hw=tuple(images[i].shape[:2]),
                    image_resized=resized.cpu().numpy(),
                    timings={"backbone": backbone_seconds, "basis": basis_seconds / len(indices)},
                )
        return results  # type: ignore[return-value]

    def extract_target(self, image: np.ndarray, name: str = "target") -> TargetFeatures:
        """Features of one target image (H, W, 3)."""
        return self._extract([image], [name])[0]

    def extract_targets(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[TargetFeatures]:
        """Features of several targets, batched through the backbone where their input sizes agree."""
        names = names or [f"target[{i}]" for i in range(len(images))]
        return self._extract(images, names)

    def extract_each(
        self, images: Sequence[np.ndarray], names: Sequence[str]
    ) -> list[TargetFeatures | DinosegError]:
        """Features of several targets with per-image failure isolation: one batched backbone pass for the
        valid images (:meth:`extract_targets`); an image that fails gets its error in its slot instead of
        failing the others.

        Args:
            images: float32 (H, W, 3) arrays in [0, 1], any sizes.
            names: one per image, used in error messages.
        Returns:
            one entry per image, in order: its :class:`TargetFeatures`, or the :class:`DinosegError` (e.g.
            :class:`InputError`) that image raised. Other exceptions (out of memory, a broken backbone) are
            not about one image and propagate.
        """
        if len(images) != len(names):
            raise InputError(f"got {len(images)} images but {len(names)} names; give one name per image")
        results: list[TargetFeatures | DinosegError] = [None] * len(images)  # type: ignore[list-item]
        good = []
        for index, (image, name) in enumerate(zip(images, names)):
            try:
                validate_image(image, name, self.backbone.patch_size)
                good.append(index)
            except DinosegError as exc:
                results[index] = exc
        try:
            features = self.extract_targets([images[i] for i in good], [names[i] for i in good]) if good else []
        except DinosegError:
            # a failure that validation did not foresee: one by one, so that only its image fails
            features = []
            for i in good:
                try:
                    features.append(self.extract_target(images[i], names[i]))
                except DinosegError as exc:
                    features.append(exc)
        for i, feature in zip(good, features):
            results[i] = feature
        return results

    def embed_references(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str] | None = None,
        mask_names: Sequence[str] | None = None,
    ) -> ReferenceSet:
        """Embed S reference images (H, W, 3) and masks (H, W) once: debiased features, patch masks, prototype.
        ``names`` (of the images) and ``mask_names`` (of the masks, e.g. their files) name them in errors."""
        if len(images) == 0:
            raise InputError("reference set is empty: give at least one reference image with its mask")
        if len(images) != len(masks):
            raise InputError(f"got {len(images)} reference images but {len(masks)} masks; give one mask per image")
        names = list(names or [f"reference[{i}]" for i in range(len(images))])
        for image, name in zip(images, names):
            validate_image(image, name, self.backbone.patch_size)
        mask_names = list(mask_names or [f"{name} mask" for name in names])
        input_masks = [
            prepare_mask(mask, image.shape[:2], self._input_hw(image), mask_name)
            for image, mask, mask_name in zip(images, masks, mask_names)
        ]
        shots = []
        for target, mask in zip(self._extract(images, names), input_masks):
            patches = mask_to_patches(mask.to(target.features.device), target.grid)
            shots.append(ReferenceShot(target.features_debiased, patches.flatten(), target.grid))
        return ReferenceSet(shots=tuple(shots), prototype=compute_prototype(shots))

    # -- segmentation -------------------------------------------------------------------------------------------
    def _check_config(self, config: InsidConfig) -> None:
        differing = [f for f in FEATURE_FIELDS if getattr(config, f) != getattr(self.config, f)]
        if differing:
            raise InputError(
                f"config fields {differing} change the features and must match the segmenter's; "
                "only tau, merge_threshold and crf may differ per concept"
            )

    def segment_features(
        self,
        references: ReferenceSet,
        target: TargetFeatures,
        config: InsidConfig | None = None,
        *,
        prior: np.ndarray | torch.Tensor | None = None,
        prior_weight: float = 0.5,
        scene_threshold: float | None = None,
    ) -> Segmentation:
        """Segment one concept in an already extracted target (steps 6-9).

        Without ``prior`` and ``scene_threshold`` this is the paper's pipeline. A target that is one window of a
        larger scene can be judged against the whole scene (:func:`dinoseg_core.geo.segment_scene`): with the
        similarity ``s = (1 - prior_weight) * s_local + prior_weight * prior``, step 6's forward test becomes
        ``s > scene_threshold`` (the paper's rule when None), step 8's cross term the mean of ``s`` over each
        cluster, and the keep rule also asks ``cross > scene_threshold`` (:func:`~dinoseg_core.aggregate.aggregate`).
        Clustering, the backward test, seed selection and the intra / area terms stay local.

        Args:
            references: from :meth:`embed_references`.
            target: from :meth:`extract_target` / :meth:`extract_each`.
            config: per-concept tau / merge_threshold / crf; the feature fields must match the segmenter's.
            prior: ``(h, w)`` on the target's patch grid (``target.grid``): a similarity known from outside the
                target, e.g. a whole-scene pass sampled at the target's patch centres.
            prior_weight: its weight in [0, 1].
            scene_threshold: similarity threshold of the scene (:func:`dinoseg_core.geo.scene_threshold`).
        Returns:
            a :class:`Segmentation`; its ``similarity`` is ``s`` (the fused similarity when a prior is given).
        """
        config = config or self.config
        self._check_config(config)
        timings = dict(target.timings)
        start = time.perf_counter()
        prior_flat = None
        if prior is not None:
            if not 0.0 <= prior_weight <= 1.0:
                raise InputError(f"prior_weight={prior_weight}: must be in [0, 1]")
            if tuple(prior.shape) != tuple(target.grid):
                raise InputError(f"prior has shape {tuple(prior.shape)}; it must hold one value per patch of the "
                                 f"target's {tuple(target.grid)} patch grid")
            device, dtype = target.features_debiased.device, target.features_debiased.dtype
            prior_flat = torch.as_tensor(prior, dtype=dtype, device=device).reshape(-1)
        candidates, similarity = localise_candidates(
            target.features_debiased, references, prior_flat, prior_weight, scene_threshold
        )
        timings["matching"] = time.perf_counter() - start

        start = time.perf_counter()
        labels = target.clusters(config.tau, self.cluster_backend)
        timings["clustering"] = time.perf_counter() - start

        start = time.perf_counter()
        scores = score_clusters(
            labels, candidates, target.features, target.features_debiased, references.prototype, similarity
        )
        patch_mask = aggregate(labels, scores, config.merge_threshold, min_cross=scene_threshold).view(target.grid)
        input_mask = upsample_patch_mask(patch_mask, target.input_hw).cpu().numpy()
        timings["aggregation"] = time.perf_counter() - start

        start = time.perf_counter()
        if config.crf:
            input_mask = crf_refine(target.image_resized, input_mask, config.image_size)
        timings["crf"] = time.perf_counter() - start

        return Segmentation(
            mask=resize_mask(input_mask, target.original_hw),
            similarity=similarity.view(target.grid).float().cpu().numpy(),
            patch_mask=patch_mask.cpu().numpy(),
            timings=timings,
        )

    def segment(self, references: ReferenceSet, image: np.ndarray, name: str = "target") -> Segmentation:
        """Segment the references' concept in one target image (H, W, 3)."""
        return self.segment_features(references, self.extract_target(image, name))

    # -- semantic correspondence --------------------------------------------------------------------------------
    def correspond(
        self, source: np.ndarray, target: np.ndarray, keypoints, debiased: bool = True
    ) -> torch.Tensor:
        """Predict where keypoints (K, 2) (x, y) of ``source`` lie in ``target``. Returns (K, 2) target pixels."""
        src, tgt = self.extract_targets([source, target], ["source", "target"])
        pick = "features_debiased" if debiased else "features"

        def grid(t: TargetFeatures) -> torch.Tensor:
            return getattr(t, pick).T.reshape(-1, *t.grid)

        return match_keypoints(grid(src), grid(tgt), keypoints, src.original_hw, tgt.original_hw)
