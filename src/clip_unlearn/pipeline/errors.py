"""The pipeline's own errors, and which failures are worth retrying later (a server down or slow)
as opposed to bad input.

    is_transient(exc)   # True: leave the request pending / exit 3; False: fail it / exit 1 or 2
"""

from __future__ import annotations

from clip_unlearn.pipeline.storage import ObjectNotFound, StorageError


class RegistryError(RuntimeError):
    """Model, version or alias not found, or the registry cannot be reached."""


class IntegrityError(RuntimeError):
    """Downloaded weights do not match the hash recorded in the registry."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ObjectNotFound):
        return False
    if isinstance(exc, (StorageError, ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                   "API request failed", "TEMPORARILY_UNAVAILABLE", "Read timed out"))
