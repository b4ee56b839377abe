"""Speculation policies: the strings `off`, `fixed:K` and `smartspec`, parsed and combined.

A policy is set per `ModelService` (the default of every request it serves) and may be set
per request (`SamplingParams.speculation`), which then wins. `smartspec` (the default) lets
the goodput controller choose the speculation length each step; `fixed:K` always proposes
K tokens (fewer only where the proposer has fewer, e.g. no n-gram match); `off` never
speculates. Every policy is capped by the engine's `max_k`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_POLICY",
    "MAX_FIXED_K",
    "SpecPolicy",
    "SpecPolicyError",
    "parse_policy",
    "resolve_policy",
]

MAX_FIXED_K = 16
_FIXED = re.compile(r"fixed:(\d+)")


class SpecPolicyError(ValueError):
    """A speculation policy string that is not `off`, `fixed:K` or `smartspec`."""


@dataclass(frozen=True)
class SpecPolicy:
    """How a request speculates: `mode`, and for `fixed` the number of proposed tokens `k`."""

    mode: Literal["off", "fixed", "smartspec"]
    k: int = 0

    def __post_init__(self) -> None:
        if self.mode == "fixed" and not 0 <= self.k <= MAX_FIXED_K:
            raise SpecPolicyError(f"fixed:K needs 0 <= K <= {MAX_FIXED_K}, got {self.k}")
        if self.mode != "fixed" and self.k != 0:
            raise SpecPolicyError(f"policy {self.mode!r} takes no k")

    def __str__(self) -> str:
        return f"fixed:{self.k}" if self.mode == "fixed" else self.mode

    @property
    def speculates(self) -> bool:
        """Whether requests under this policy may ever propose tokens."""
        return self.mode == "smartspec" or (self.mode == "fixed" and self.k > 0)


DEFAULT_POLICY = SpecPolicy("smartspec")


def parse_policy(text: str | SpecPolicy | None) -> SpecPolicy:
    """The policy written as `text` (case and surrounding spaces ignored); None = smartspec.

    Raises `SpecPolicyError` with the accepted forms when `text` is none of them.
    """
    if text is None:
        return DEFAULT_POLICY
    if isinstance(text, SpecPolicy):
        return text
    if not isinstance(text, str):
        raise SpecPolicyError(f"speculation policy must be a string, got {type(text).__name__}")
    value = text.strip().lower()
    if value in ("off", "smartspec"):
        return SpecPolicy(value)  # type: ignore[arg-type]
    match = _FIXED.fullmatch(value)
    if match is not None:
        k = int(match.group(1))
        if k > MAX_FIXED_K:
            raise SpecPolicyError(
                f"speculation policy {text!r}: K must be at most {MAX_FIXED_K} "
                f"(use e.g. 'fixed:4', or 'smartspec' to let the engine choose)"
            )
        return SpecPolicy("off") if k == 0 else SpecPolicy("fixed", k)
    raise SpecPolicyError(
        f"invalid speculation policy {text!r}: use 'off', 'fixed:K' with K an integer "
        f"from 0 to {MAX_FIXED_K} (e.g. 'fixed:3'), or 'smartspec'"
    )


def resolve_policy(
    service: str | SpecPolicy | None, request: str | SpecPolicy | None, *, max_k: int
) -> SpecPolicy:
    """The policy a request runs under: its own if set, else its service's; capped at `max_k`.

    `max_k` is what the engine can verify per request (0 when it has no proposer: every
    policy is then `off`).
    """
    policy = parse_policy(request) if request is not None else parse_policy(service)
    if max_k <= 0:
        return SpecPolicy("off")
    if policy.mode == "fixed" and policy.k > max_k:
        return SpecPolicy("fixed", max_k)
    return policy
