"""Retries for work that touches storage: only transient failures are retried, with backoff (docs/reliability.md).

Two levels. A task (``STORAGE_RETRIES``) is retried by Prefect when it failed of a transient storage error
(throttling, HTTP 5xx, a dropped connection, a time-out: :func:`dinoseg_core.io.storage.failure_kind`); never for
a permanent one (not found, access denied, bad input) nor a fatal one (disk full: the run stops). Inside a
label batch each item is retried on its own (:data:`ITEM_RETRY_DELAYS`), so that one flaky object does not re-run
its batch.
"""

from __future__ import annotations

from dinoseg_core.io.storage import failure_kind

#: Seconds before each new attempt of one item whose storage failed transiently inside a batch (the batch's other
#: items are done meanwhile). With the store's own retries (botocore: 5 attempts) this rides out about a minute of
#: outage; an item still failing after the last one fails alone, with its reason.
ITEM_RETRY_DELAYS: tuple[float, ...] = (1.0, 4.0, 16.0, 40.0)


def is_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry a failure that may pass; never a missing object, a refusal, bad input or a
    full disk (they fail the same way again)."""
    try:
        state.result()
    except Exception as exc:
        return failure_kind(exc) == "transient"
    return False


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage failure worth trying again."""
    return failure_kind(exc) == "transient"


def fatal(exc: BaseException) -> bool:
    """Whether ``exc`` ends the run (no space left, quota): retrying or going on with other items cannot help."""
    return failure_kind(exc) == "fatal"


STORAGE_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 16], retry_jitter_factor=0.2,
                       retry_condition_fn=is_transient)
