"""The step-time model: seconds per engine step, linear in what the step computes, fitted online.

    t = c0 + c_seq·n + c_prop·Σk_i + c_pre·prefill + c_ctx·Σctx_i + c_dstep·max k_i
        + c_catch·catch-up

`n` is the number of decoding requests in the target pass (each brings its last token and
its per-sequence work: sampling, attention launch, bookkeeping), `Σk_i` the proposed tokens
they verify (and, with a draft model, the tokens its passes compute), `prefill` the prompt
tokens in the same step (chunked prefill), `Σctx_i` the context tokens attended to, and —
only for a draft-model proposer — `max k_i` its sequential draft passes and `catch-up` the
tokens its first pass feeds beyond one per proposing request (a request's draft cache
misses every token since it last proposed: the whole prompt the first time). Prompt
lookup costs ~nothing to propose, so its two draft features are zero.

Why `n` and `Σk` are separate features (an earlier model had one "batched tokens"
Σ(k_i+1) feature): a request and a proposal are different work — a request brings its
sampling, its KV reads and its bookkeeping, a proposal one more query row over KV already
read — and where the two differ (a GPU, a long context) one coefficient for both
mis-charges one of them. (Measured on the default model with one
CPU thread, quiet machine: c0 ≈ 24 ms, ≈ 0.85 ms per request and ≈ 0.85 ms per proposal,
so here the two happen to cost the same.)

Fit: exponentially weighted least squares (forgetting λ = 0.99 per step, ~100 steps of
memory) with a ridge that does NOT decay: (Σλ^age·w·xxᵀ + diag(ρ·s²))θ = Σλ^age·w·x·y,
`s²` the largest running mean of each feature's square, so ρ counts "typical steps". The
ridge is the prior: ρ = `ridge` (0.05 steps) on every coefficient but the proposal
tokens', which gets `token_prior` (0.5 steps) — "a step costs the same whatever the number
of tokens it verifies, until the data says otherwise". Where proposals come nearly in
proportion to the batch (everyone at the same k) the data can hardly tell the two costs
apart and the prior leans the split towards the requests; where the verified tokens do
cost (a GPU at a large batch), steps at different k outweigh half a pseudo-step quickly.
(A stronger prior is not free: when the controller then keeps one k for every step, the
cost of the k it never tries is an extrapolation that the prior, not data, decides.)
The ridge also keeps directions the recent batches did not excite (e.g. draft cost while nobody
speculated) from drifting to nonsense — the covariance wind-up of plain RLS with
forgetting — and pulls them slowly back to 0, which makes the controller re-try
speculation from time to time. Robustness to the first steps (lazy initialisation,
allocator growth, compilation) and to outliers (a GC pause, a noisy neighbour, the first
step at a new batch size): the first `warmup` steps are ignored; of the next `min_steps`,
those slower than `outlier_ratio`× their median are dropped before the first fit; every
later step is Huber-weighted against a running scale of the residuals. Coefficients are
kept non-negative (a step never gets cheaper by doing more work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FEATURE_NAMES", "StepFeatures", "StepTimeModel"]

FEATURE_NAMES = (
    "constant",
    "sequences",
    "proposed_tokens",
    "prefill_tokens",
    "context_tokens",
    "draft_steps",
    "draft_catch_up_tokens",
)
_PROPOSED = FEATURE_NAMES.index("proposed_tokens")


@dataclass(frozen=True)
class StepFeatures:
    """What one engine step computes (see the module docstring)."""

    sequences: int  # decoding requests in the target pass
    proposed_tokens: int  # Σ k_i: proposals verified (and, with a draft, drafted)
    context_tokens: int  # Σ ctx_i over decoding requests
    prefill_tokens: int = 0
    draft_steps: int = 0  # max k_i (draft-model proposer only)
    draft_catch_up_tokens: int = 0  # fed beyond one per proposing request (draft only)

    @property
    def batched_tokens(self) -> int:
        """Σ(k_i + 1): the decode/verification query tokens of the target pass."""
        return self.sequences + self.proposed_tokens

    def vector(self) -> np.ndarray:
        return np.array(
            [
                1.0,
                self.sequences,
                self.proposed_tokens,
                self.prefill_tokens,
                self.context_tokens,
                self.draft_steps,
                self.draft_catch_up_tokens,
            ],
            dtype=np.float64,
        )


class StepTimeModel:
    """Online fit of seconds per step from `StepFeatures` (see the module docstring)."""

    def __init__(
        self,
        *,
        forgetting: float = 0.99,
        ridge: float = 0.05,
        token_prior: float = 0.5,
        warmup: int = 2,
        min_steps: int = 6,
        huber: float = 3.0,
        outlier_ratio: float = 5.0,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        n = len(FEATURE_NAMES)
        self.forgetting = forgetting
        self.ridge = ridge
        self.token_prior = token_prior
        self.warmup = warmup
        self.min_steps = min_steps
        self.huber = huber
        self.outlier_ratio = outlier_ratio
        self._pending: list[tuple[np.ndarray, float]] = []
        self._xtx = np.zeros((n, n))
        self._xty = np.zeros(n)
        self._sq = np.zeros(n)  # EW sum of x²
        self._scale = np.zeros(n)  # largest EW mean of x² seen: the ridge's scale
        self._weight = 0.0  # EW number of steps
        self._abs_residual = 0.0  # EW mean |residual|, for the Huber threshold
        self._theta = np.zeros(n)
        self._dirty = False
        self.num_seen = 0  # every observed step, warm-up included
        self.num_fitted = 0

    @property
    def ready(self) -> bool:
        """Whether enough steps were measured for predictions to mean something."""
        return self.num_fitted >= self.min_steps

    @property
    def num_measured(self) -> int:
        """Steps measured after the warm-up (fitted, or waiting for the first fit)."""
        return self.num_fitted + len(self._pending)

    @property
    def coefficients(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, self._solve().tolist(), strict=True))

    def observe(self, features: StepFeatures, seconds: float) -> None:
        """Add one measured step."""
        self.num_seen += 1
        if self.num_seen <= self.warmup or not np.isfinite(seconds) or seconds <= 0:
            return
        x = features.vector()
        if self.ready:
            self._add(x, seconds, robust=True)
            return
        # The first fit: wait for `min_steps` steps, then drop those far slower than their
        # median (a first step at a new batch size, a compilation), as no model exists yet
        # to judge residuals by.
        self._pending.append((x, seconds))
        if len(self._pending) >= self.min_steps:
            median = float(np.median([y for _, y in self._pending]))
            kept = [(x, y) for x, y in self._pending if y <= self.outlier_ratio * median]
            self._pending = []
            for x_kept, y in kept:
                self._abs_residual = self.forgetting * self._abs_residual + 0.1 * y
                self._add(x_kept, y, robust=False)

    def _add(self, x: np.ndarray, seconds: float, *, robust: bool) -> None:
        weight = 1.0
        if robust:
            residual = seconds - float(x @ self._solve())
            scale = self._abs_residual / max(self._weight, 1e-12)
            clipped = abs(residual)
            if scale > 0 and clipped > self.huber * scale:
                weight = self.huber * scale / clipped
                clipped = self.huber * scale
            self._abs_residual = self.forgetting * self._abs_residual + clipped
        lam = self.forgetting
        self._xtx = lam * self._xtx + weight * np.outer(x, x)
        self._xty = lam * self._xty + weight * x * seconds
        self._sq = lam * self._sq + x * x
        self._weight = lam * self._weight + 1.0
        self._scale = np.maximum(self._scale, self._sq / self._weight)
        self.num_fitted += 1
        self._dirty = True

    def predict(self, features: StepFeatures) -> float:
        """Predicted seconds of a step (never below 1 µs)."""
        return max(float(features.vector() @ self._solve()), 1e-6)

    def theta(self) -> np.ndarray:
        """The coefficient vector θ, in the order of `FEATURE_NAMES`."""
        return self._solve().copy()

    def _solve(self) -> np.ndarray:
        if not self._dirty:
            return self._theta
        n = len(FEATURE_NAMES)
        typical = self._scale.copy()
        typical[typical <= 0] = 1.0
        strength = np.full(n, self.ridge)
        strength[_PROPOSED] = self.token_prior
        a = self._xtx + np.diag(strength * typical)
        b = self._xty.copy()
        free = np.ones(n, dtype=bool)
        theta = np.zeros(n)
        for _ in range(n):  # active set: drop negative coefficients, solve again
            idx = np.flatnonzero(free)
            theta[:] = 0.0
            theta[idx] = np.linalg.solve(a[np.ix_(idx, idx)], b[idx])
            negative = free & (theta < 0)
            if not negative.any():
                break
            free[np.argmin(np.where(free, theta, np.inf))] = False
        self._theta = np.maximum(theta, 0.0)
        self._dirty = False
        return self._theta
