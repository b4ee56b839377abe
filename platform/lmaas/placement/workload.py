"""The traffic a service must carry: a total request rate and a request-size histogram.

A `Bucket` is a range of input lengths × a range of output lengths (tokens, ``lo < n ≤ hi``,
the shape of a Prometheus histogram's ``le`` buckets) with the share of requests that fall
in it. Its `name` (``i0-25/o25-100``) keys profiles and the plan's routing table.

The default histograms (`Workload.short_chat`, `Workload.long_document`)
are synthetic, shaped like the datasets of the Mélange paper (Chatbot Arena for short chat,
PubMed summarisation for long documents) on its profiling grid; they are products of one
input and one output marginal, not measured joint distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MELANGE_EDGES", "Bucket", "Workload"]

# The paper's profiling grid: input and output lengths 25, 100, 250, 500, 1000, 2000.
MELANGE_EDGES = (0, 25, 100, 250, 500, 1000, 2000)

_SHORT_IN = (0.30, 0.35, 0.20, 0.10, 0.04, 0.01)
_SHORT_OUT = (0.10, 0.25, 0.30, 0.25, 0.09, 0.01)
_LONG_IN_EDGES = (500, 1000, 1500, 2000, 3000, 3500)
_LONG_IN = (0.15, 0.25, 0.25, 0.25, 0.10)
_LONG_OUT_EDGES = (0, 100, 250, 500)
_LONG_OUT = (0.30, 0.50, 0.20)


class Bucket(BaseModel):
    """Requests with ``input_tokens[0] < input ≤ input_tokens[1]`` and likewise for output."""

    model_config = ConfigDict(frozen=True)

    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    share: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ranges(self) -> Bucket:
        for label, (lo, hi) in (("input", self.input_tokens), ("output", self.output_tokens)):
            if lo < 0 or hi <= lo:
                raise ValueError(
                    f"{label}_tokens must be a range (lo, hi] with 0 ≤ lo < hi, got ({lo}, {hi})"
                )
        return self

    @property
    def name(self) -> str:
        (a, b), (c, d) = self.input_tokens, self.output_tokens
        return f"i{a}-{b}/o{c}-{d}"

    @property
    def mean_input(self) -> float:
        """Mean input length of requests spread evenly over the range."""
        lo, hi = self.input_tokens
        return (lo + 1 + hi) / 2

    @property
    def mean_output(self) -> float:
        lo, hi = self.output_tokens
        return (lo + 1 + hi) / 2

    def contains(self, input_tokens: int, output_tokens: int) -> bool:
        (a, b), (c, d) = self.input_tokens, self.output_tokens
        return a < input_tokens <= b and c < output_tokens <= d


class Workload(BaseModel):
    """A total rate (requests/s) split over request-size buckets whose shares sum to 1."""

    rate: float = Field(ge=0.0, description="requests per second")
    buckets: list[Bucket]

    @model_validator(mode="after")
    def _shares(self) -> Workload:
        if not self.buckets:
            raise ValueError("a workload needs at least one bucket")
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"bucket ranges repeat: {', '.join(dup)}")
        total = sum(b.share for b in self.buckets)
        if total == 0 and self.rate == 0:
            return self
        if abs(total - 1.0) > 1e-3:
            raise ValueError(
                f"bucket shares sum to {total:.4f}, not 1: give each bucket's fraction of requests"
            )
        if total != 1.0:
            self.buckets = [b.model_copy(update={"share": b.share / total}) for b in self.buckets]
        return self

    def bucket_rates(self) -> dict[str, float]:
        """Requests per second in each bucket (rate × share), by bucket name."""
        return {b.name: self.rate * b.share for b in self.buckets}

    def scaled(self, rate: float) -> Workload:
        """The same histogram at another total rate."""
        return Workload(rate=rate, buckets=self.buckets)

    @classmethod
    def from_grid(
        cls,
        rate: float,
        input_edges: Sequence[int],
        output_edges: Sequence[int],
        shares: Sequence[Sequence[float]],
    ) -> Workload:
        """A histogram given as a grid: ``shares[i][j]`` for input range i × output range j."""
        if len(shares) != len(input_edges) - 1 or any(
            len(row) != len(output_edges) - 1 for row in shares
        ):
            raise ValueError(
                f"a grid of {len(input_edges) - 1}×{len(output_edges) - 1} shares is needed "
                f"for {len(input_edges)} input and {len(output_edges)} output edges"
            )
        buckets = [
            Bucket(
                input_tokens=(input_edges[i], input_edges[i + 1]),
                output_tokens=(output_edges[j], output_edges[j + 1]),
                share=shares[i][j],
            )
            for i in range(len(input_edges) - 1)
            for j in range(len(output_edges) - 1)
        ]
        return cls(rate=rate, buckets=buckets)

    @classmethod
    def from_marginals(
        cls,
        rate: float,
        input_edges: Sequence[int],
        input_shares: Sequence[float],
        output_edges: Sequence[int],
        output_shares: Sequence[float],
    ) -> Workload:
        """Input and output lengths taken as independent: share(i, j) = p_in(i)·p_out(j)."""
        grid = [[p * q for q in output_shares] for p in input_shares]
        return cls.from_grid(rate, input_edges, output_edges, grid)

    @classmethod
    def short_chat(cls, rate: float = 1.0) -> Workload:
        """Short chat (Arena-like): prompts mostly under 250 tokens, answers under 500; 6×6."""
        return cls.from_marginals(rate, MELANGE_EDGES, _SHORT_IN, MELANGE_EDGES, _SHORT_OUT)

    @classmethod
    def long_document(cls, rate: float = 1.0) -> Workload:
        """Long documents (PubMed-like summaries): 500–3500 input tokens, ≤ 500 output; 5×3."""
        return cls.from_marginals(rate, _LONG_IN_EDGES, _LONG_IN, _LONG_OUT_EDGES, _LONG_OUT)
