"""The operator's two kinds of failure, mapped to kopf's by the handlers.

`NotReady`: something it needs is not there yet (a Model, the tenant, the API server);
retried after `delay` seconds. `InvalidSpec`: the spec can never work as written; not
retried until the spec changes, and its message says what to fix.
"""

from __future__ import annotations

__all__ = ["InvalidSpec", "NotReady"]


class NotReady(Exception):
    def __init__(self, message: str, *, reason: str = "Waiting", delay: float = 15.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay = delay


class InvalidSpec(Exception):
    def __init__(self, message: str, *, reason: str = "InvalidSpec") -> None:
        super().__init__(message)
        self.reason = reason
