"""Per-position acceptance rates, estimated online per request with per-(tenant, adapter) priors.

The rate a_p is the probability that proposal p is accepted given that proposals 1..p-1
were. One verification of k proposals of which m were accepted is a run of Bernoulli
trials: successes at positions 1..m, a failure at m+1 (if m < k), and nothing observed
beyond (censored). Each position therefore keeps a Beta posterior over a_p:

- counts, not averages: a Beta(α, β) is conjugate to these trials and knows how much data
  it has, which is what lets a young request lean on its tenant's prior and an old one on
  its own record. An EMA of rates cannot tell 2 observations from 200.
- counts discounted per engine step (γ = 0.97 for a request, ~30 steps of memory; 0.99
  for the priors), so the estimates follow drift like an EMA (a request that stops
  copying its input, a draft that was just re-distilled), and — because the clock is the
  step, not the observation — a request the controller stopped speculating for (k = 0,
  nothing observed) drifts back to its tenant's prior and gets tried again, instead of
  being stuck forever on two unlucky early rejections.
- shrinkage position by position, down a hierarchy: the rate at position p of a request
  leans on its (tenant, adapter)'s rate at p (`strength` pseudo-trials), which leans on
  all traffic's rate at p (`key_strength`), which leans on all traffic's pooled rate over
  positions (`position_strength`), which leans on a default (0.6, on the optimistic side so
  that a new service tries speculation and measures it; `default_strength`). Deep
  positions are tried less often, and one early failure at position 3 must not keep k
  below 3 forever while positions 1–2 keep being accepted.

Why per position all the way up, and not a request's positions leaning on the request's
own pooled rate (an earlier version): the conditional rates are far from flat. Prompt
lookup on the grounded workload measured a_1..a_5 = 0.53, 0.79, 0.90, 0.92, 0.96 — a
verification is mostly all-or-nothing (the output copies a stretch of the input, or it
does not). A request whose first proposals keep failing has a low pooled rate, and
leaning its positions 2–5 on that rate made them look as bad as position 1: the expected
gain of a 5th proposal came out at ~0.3⁵ instead of a_1·0.8·0.9·0.9·0.96, and SmartSpec
settled at k ≈ 3 where k = 5 was better. A request's own record still moves each of its
positions (a copying request's a_1 rises to ~1 within a few steps).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["AcceptanceEstimator", "AcceptancePriors", "DiscountedCounts", "expected_tokens"]

_DEFAULT_RATE = 0.6


def expected_tokens(rates: list[float], k: int) -> float:
    """E(k) = 1 + a_1 + a_1·a_2 + … + a_1⋯a_k: tokens one verification of k proposals yields."""
    total, run = 1.0, 1.0
    for p in range(k):
        run *= rates[p]
        total += run
    return total


class DiscountedCounts:
    """Per-position successes and trials, discounted by `decay` per step of the clock `now`."""

    __slots__ = ("decay", "num_successes", "num_trials", "stamp", "successes", "trials")

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.successes: list[float] = []
        self.trials: list[float] = []
        self.num_successes = 0.0  # over all positions
        self.num_trials = 0.0
        self.stamp = 0  # the step the counts are discounted to

    def _factor(self, now: int) -> float:
        return self.decay ** (now - self.stamp) if now > self.stamp else 1.0

    def observe(self, now: int, num_proposed: int, num_accepted: int) -> None:
        """Record one verification at step `now`: `num_accepted` of `num_proposed` accepted."""
        if num_proposed <= 0:
            return
        if not 0 <= num_accepted <= num_proposed:
            raise ValueError(f"accepted {num_accepted} of {num_proposed} proposals")
        d = self._factor(now)
        if d < 1.0:
            self.successes = [s * d for s in self.successes]
            self.trials = [n * d for n in self.trials]
            self.num_successes *= d
            self.num_trials *= d
        self.stamp = max(self.stamp, now)
        observed = min(num_accepted + 1, num_proposed)
        while len(self.trials) < observed:
            self.successes.append(0.0)
            self.trials.append(0.0)
        for p in range(observed):
            self.trials[p] += 1.0
            if p < num_accepted:
                self.successes[p] += 1.0
        self.num_trials += observed
        self.num_successes += num_accepted

    def pooled(self, now: int, parent: float, strength: float) -> float:
        """Acceptance over all positions, with `parent` as `strength` pseudo-trials."""
        d = self._factor(now)
        return (d * self.num_successes + strength * parent) / (d * self.num_trials + strength)

    def at(self, now: int, position: int, pooled: float, strength: float) -> float:
        """Acceptance at `position` (0-based), leaning on `pooled` with `strength` pseudo-trials."""
        if position >= len(self.trials):
            return pooled
        d = self._factor(now)
        s, n = d * self.successes[position], d * self.trials[position]
        return (s + strength * pooled) / (n + strength)


class AcceptancePriors:
    """Acceptance priors per (tenant, adapter) key and over all traffic; holds the step clock.

    Keeps at most `max_keys` keys (least recently updated forgotten first).
    """

    def __init__(
        self,
        *,
        default_rate: float = _DEFAULT_RATE,
        default_strength: float = 2.0,
        key_strength: float = 4.0,
        position_strength: float = 2.0,
        decay: float = 0.99,
        max_keys: int = 4096,
    ) -> None:
        if not 0.0 < default_rate < 1.0:
            raise ValueError(f"default_rate must be in (0, 1), got {default_rate}")
        self.default_rate = default_rate
        self.default_strength = default_strength
        self.key_strength = key_strength
        self.position_strength = position_strength
        self.decay = decay
        self.max_keys = max_keys
        self.now = 0  # engine steps so far: the clock of every discount
        self._global = DiscountedCounts(decay)
        self._keys: OrderedDict[Hashable, DiscountedCounts] = OrderedDict()
        self._pooled_memo: dict[Hashable, float] = {}  # valid until the next observe/advance
        self._rate_memo: dict[tuple[Hashable, int], float] = {}  # likewise

    def advance(self) -> int:
        """One more engine step; returns the new time."""
        self.now += 1
        self._pooled_memo.clear()
        self._rate_memo.clear()
        return self.now

    def observe(self, key: Hashable, num_proposed: int, num_accepted: int) -> None:
        """Record one verification of a request of `key` (and of all traffic)."""
        self._pooled_memo.clear()
        self._rate_memo.clear()
        self._global.observe(self.now, num_proposed, num_accepted)
        counts = self._keys.get(key)
        if counts is None:
            counts = self._keys[key] = DiscountedCounts(self.decay)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        counts.observe(self.now, num_proposed, num_accepted)

    def pooled(self, key: Hashable) -> float:
        """Acceptance of `key`'s requests over all positions (all traffic if `key` is unseen)."""
        memo = self._pooled_memo.get(key)
        if memo is not None:
            return memo
        parent = self._global.pooled(self.now, self.default_rate, self.default_strength)
        counts = self._keys.get(key)
        value = parent if counts is None else counts.pooled(self.now, parent, self.key_strength)
        self._pooled_memo[key] = value
        return value

    def rate(self, key: Hashable, position: int) -> float:
        """Prior acceptance at `position` (0-based) for a request of `key`: the key's rate
        there, over all traffic's rate there, over all traffic's pooled rate."""
        memo_key = (key, position)
        memo = self._rate_memo.get(memo_key)
        if memo is not None:
            return memo
        pooled = self._global.pooled(self.now, self.default_rate, self.default_strength)
        value = self._global.at(self.now, position, pooled, self.position_strength)
        counts = self._keys.get(key)
        if counts is not None:
            value = counts.at(self.now, position, value, self.key_strength)
        self._rate_memo[memo_key] = value
        return value

    def rates(self, key: Hashable, k: int) -> list[float]:
        return [self.rate(key, p) for p in range(k)]

    def keys(self) -> list[Hashable]:
        return list(self._keys)


class AcceptanceEstimator:
    """The acceptance rates of one request: its own discounted record over its key's prior."""

    __slots__ = ("_counts", "key", "priors", "strength")

    def __init__(
        self,
        priors: AcceptancePriors,
        key: Hashable,
        *,
        strength: float = 4.0,
        decay: float = 0.97,
    ) -> None:
        self.priors = priors
        self.key = key
        self.strength = strength
        self._counts = DiscountedCounts(decay)
        self._counts.stamp = priors.now

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        """Record one verification of this request (also feeds its key's prior)."""
        self._counts.observe(self.priors.now, num_proposed, num_accepted)
        self.priors.observe(self.key, num_proposed, num_accepted)

    def pooled(self) -> float:
        """This request's acceptance over all positions (over its key's pooled rate)."""
        return self._counts.pooled(self.priors.now, self.priors.pooled(self.key), self.strength)

    def rate(self, position: int) -> float:
        """a at `position` (0-based): its own record there over its key's rate there."""
        prior = self.priors.rate(self.key, position)
        return self._counts.at(self.priors.now, position, prior, self.strength)

    def rates(self, k: int) -> list[float]:
        """a_1..a_k (list index 0 is position 1)."""
        return [self.rate(p) for p in range(k)]

    def expected_tokens(self, k: int) -> float:
        return expected_tokens(self.rates(k), k)
