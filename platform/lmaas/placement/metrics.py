"""Workloads from the gateway's Prometheus metrics: request-size histograms and the rate.

The gateway is expected to expose, per served model (label ``model``):

- ``lmaas_request_prompt_tokens`` and ``lmaas_request_completion_tokens``: histograms of
  the input and output lengths of finished requests (``_bucket{le=…}``, ``_count``);
- optionally ``lmaas_request_size_total{prompt_le=…, completion_le=…}``: a counter of the
  joint histogram. When it is there it is used as is; otherwise input and output lengths
  are taken as independent (the product of the two marginals).

Counters are cumulative, so a workload needs two scrapes: rate = Δcount / Δt and shares =
Δbucket counts. The names are parameters, so another exporter's histograms work too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lmaas.placement.workload import Bucket, Workload

__all__ = ["MetricsUnavailable", "Scrape", "fetch_workload", "parse_scrape", "workload_between"]

PROMPT = "lmaas_request_prompt_tokens"
COMPLETION = "lmaas_request_completion_tokens"
JOINT = "lmaas_request_size_total"


class MetricsUnavailable(ValueError):
    """The metrics do not hold what a workload needs."""


Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_scrape(text: str, labels: Mapping[str, str] | None = None) -> Scrape:
    """Samples by name → label set → value, keeping those whose labels match `labels`."""
    wanted = dict(labels or {})
    samples: Scrape = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MetricsUnavailable(f"not Prometheus text: {exc}") from exc
    for family in families:
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in wanted.items()):
                continue
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in wanted))
            by_labels = samples.setdefault(sample.name, {})
            by_labels[key] = by_labels.get(key, 0.0) + sample.value
    return samples


def _histogram(scrape: Scrape, name: str) -> dict[float, float]:
    """Cumulative counts by upper edge, summed over other labels."""
    out: dict[float, float] = {}
    for labels, value in scrape.get(f"{name}_bucket", {}).items():
        le = dict(labels).get("le")
        if le is not None:
            out[float(le)] = out.get(float(le), 0.0) + value
    return out


def _edges(uppers: list[float]) -> list[tuple[int, int]]:
    ranges, lo = [], 0
    for up in sorted(uppers):
        hi = max(lo * 2, lo + 1) if math.isinf(up) else int(up)
        if hi > lo:
            ranges.append((lo, hi))
            lo = hi
    return ranges


def _marginal(
    before: Scrape, after: Scrape, name: str
) -> tuple[list[tuple[int, int]], list[float]]:
    new, old = _histogram(after, name), _histogram(before, name)
    if not new:
        raise MetricsUnavailable(
            f"the metrics have no histogram {name} (…_bucket{{le=…}}): is this the gateway's "
            "/metrics, and does it serve the model asked for?"
        )
    uppers = sorted(new)
    cumulative = [new[u] - old.get(u, 0.0) for u in uppers]
    counts = [max(0.0, c - (cumulative[i - 1] if i else 0.0)) for i, c in enumerate(cumulative)]
    ranges = _edges(uppers)
    return ranges, counts[: len(ranges)]


def workload_between(before: Scrape, after: Scrape, seconds: float) -> Workload:
    """The workload of the interval between two scrapes `seconds` apart."""
    if seconds <= 0:
        raise ValueError("the scrapes must be some time apart")
    joint_new = after.get(JOINT, {})
    if joint_new:
        joint_old = before.get(JOINT, {})
        counts: dict[tuple[float, float], float] = {}
        for labels, value in joint_new.items():
            d = dict(labels)
            key = (float(d.get("prompt_le", "inf")), float(d.get("completion_le", "inf")))
            counts[key] = counts.get(key, 0.0) + value - joint_old.get(labels, 0.0)
        ins = _edges(sorted({k[0] for k in counts}))
        outs = _edges(sorted({k[1] for k in counts}))
        in_up = sorted({k[0] for k in counts})
        out_up = sorted({k[1] for k in counts})
        total = sum(max(0.0, c) for c in counts.values())
        buckets = [
            Bucket(
                input_tokens=ins[i],
                output_tokens=outs[j],
                share=max(0.0, counts.get((in_up[i], out_up[j]), 0.0)) / total if total else 0.0,
            )
            for i in range(len(ins))
            for j in range(len(outs))
        ]
        return Workload(rate=total / seconds, buckets=buckets)
    in_ranges, in_counts = _marginal(before, after, PROMPT)
    out_ranges, out_counts = _marginal(before, after, COMPLETION)
    total = sum(in_counts)
    if total <= 0:
        grid = [[0.0] * len(out_ranges) for _ in in_ranges]
    else:
        out_total = sum(out_counts) or 1.0
        grid = [[p / total * q / out_total for q in out_counts] for p in in_counts]
    edges_in = [in_ranges[0][0]] + [hi for _, hi in in_ranges]
    edges_out = [out_ranges[0][0]] + [hi for _, hi in out_ranges]
    return Workload.from_grid(total / seconds, edges_in, edges_out, grid)


def fetch_workload(
    url: str,
    *,
    window_s: float = 30.0,
    labels: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
) -> Workload:
    """Scrape `url` twice, `window_s` apart, and return the workload in between."""
    own = client is None
    http = client or httpx.Client(timeout=10.0)
    try:

        def scrape() -> Scrape:
            try:
                response = http.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise MetricsUnavailable(f"cannot read metrics from {url}: {exc}") from exc
            return parse_scrape(response.text, labels)

        first, start = scrape(), time.monotonic()
        time.sleep(window_s)
        second, end = scrape(), time.monotonic()
    finally:
        if own:
            http.close()
    return workload_between(first, second, end - start)
