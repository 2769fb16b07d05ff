"""A run's radiometry (``--radiometry``): resolved once, before any scene is labelled.

Only ``collection-percentile`` needs work here: its stretch is computed once for the whole collection and kept in
the archive's run log (``radiometry`` in ``runs/<run_id>``), so that the next runs over the same archive (a nightly
schedule) reuse it instead of computing a new one from a collection that has grown: every scene of every run is
then scaled the same way, and masks stay comparable. The stretch's ranges are part of each mask's config digest,
so a stretch that did change (a new archive, new percentiles or bands) relabels the masks made with the old one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import ObjectNotFoundError
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.radiometry import Radiometry
from tasks.retry import STORAGE_RETRIES
from tasks.sources import list_images

#: The key of a run log that holds the run's radiometry (:func:`run_record`).
RUN_LOG_KEY = "radiometry"


def run_record(radiometry: Radiometry, bands: Sequence[int] | None) -> dict[str, Any]:
    """What a run log keeps of the run's radiometry: the canonical text, the bands and (collection) the ranges."""
    return {"radiometry": str(radiometry), "bands": list(bands) if bands else None,
            "ranges": [list(r) for r in radiometry.ranges] if radiometry.ranges is not None else None}


def stored_radiometry(archive: MaskArchive, radiometry: Radiometry, bands: Sequence[int] | None
                      ) -> tuple[Radiometry, str] | None:
    """The collection stretch the newest run log of ``archive`` recorded for this radiometry and these bands, with
    that run's id; None when no run recorded one."""
    wanted = {"radiometry": str(radiometry), "bands": list(bands) if bands else None}
    for log in reversed(archive.run_logs()):
        entry = log.get(RUN_LOG_KEY)
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in wanted.items()) \
                and isinstance(entry.get("ranges"), list):
            return radiometry.with_ranges(entry["ranges"]), str(log.get("run_id"))
    return None


@task(name="resolve-radiometry", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def resolve_radiometry(radiometry: str | Radiometry | None, archive_url: str, images: str | list[str],
                       bands: Sequence[int] | None, storage_options: dict | None) -> Radiometry:
    """The run's radiometry, ready to read scenes with: a collection stretch is taken from the archive's newest
    run log that recorded one (same radiometry and bands), else computed from every scene of ``images``
    (:func:`dinoseg_core.io.raster.collection_radiometry`); every other radiometry is returned as parsed."""
    spec = Radiometry.parse(radiometry)
    if not spec.needs_collection:
        return spec
    logger = get_run_logger()
    try:
        stored = stored_radiometry(MaskArchive.open(archive_url, storage_options, mode="r"), spec, bands)
    except ObjectNotFoundError:  # a new archive: nothing recorded yet
        stored = None
    if stored is not None:
        resolved, run_id = stored
        logger.info("radiometry %s: the collection stretch %s of run %s", spec, list(resolved.ranges), run_id)
        return resolved
    from dinoseg_core.io.raster import collection_radiometry

    scenes = [item.url for item in list_images.fn(images, storage_options) if item.kind == "scene"]
    resolved = collection_radiometry(scenes, bands, spec, storage_options) if scenes else spec.with_ranges(())
    logger.info("radiometry %s: computed the collection stretch %s from %d scene(s)", spec, list(resolved.ranges),
                len(scenes))
    return resolved
