"""Retries for tasks that touch storage: only transient storage failures are retried, with backoff."""

from __future__ import annotations

from dinoseg_core.errors import ObjectNotFoundError, StorageError


def is_transient(task, task_run, state) -> bool:
    """Retry a network or service failure; never a missing object or bad input (they fail the same way again)."""
    try:
        state.result()
    except ObjectNotFoundError:
        return False
    except StorageError:
        return True
    except Exception:
        return False
    return False


STORAGE_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 16], retry_condition_fn=is_transient)
