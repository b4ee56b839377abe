"""The error every adapter check raises: what was wrong, how to fix it, and a stable code."""

from __future__ import annotations

__all__ = ["AdapterError"]


class AdapterError(ValueError):
    """An adapter (archive, config or weights) that lmaas cannot accept.

    `code` is stable and machine-readable (it becomes the `code` of the OpenAI error body);
    the message says what was wrong and how to fix it.
    """

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
