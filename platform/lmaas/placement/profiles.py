"""Profiles: T_g[b], the highest request rate one GPU of type g sustains on bucket b under an SLO.

Three sources, recorded per entry: ``measured`` (`lmaas profile` on real hardware),
``imported`` (a file in the Mélange release's ``example.json`` schema, or our own), and
``roofline`` (the performance model, calibrated by the other two). `complete_profiles`
fills every (type, bucket) that no file gave from the calibrated model.

Our file schema (``lmaas profile`` writes it)::

    {"model": "llama-2-7b", "slo": {"metric": "tpot", "statistic": "mean", "target_ms": 120},
     "buckets": [{"input_tokens": [0, 25], "output_tokens": [0, 25]}, …],
     "throughput": {"A10G": {"i0-25/o0-25": 9.5, …}, …},
     "source": {"A10G": {"i0-25/o0-25": "measured", …}, …}}

The Mélange schema has no token ranges: its rows are input-length buckets and its columns
output-length buckets. Optional ``input_token_edges`` / ``output_token_edges`` keys give
them; without them the paper's grid (25, 100, 250, 500, 1000, 2000, then doubling) is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from lmaas.placement.catalog import GPUType, default_catalog
from lmaas.placement.roofline import MeasuredPoint, RooflineModel
from lmaas.placement.specs import SLO, ModelSpec
from lmaas.placement.workload import MELANGE_EDGES, Bucket, Workload

__all__ = [
    "MelangeInput",
    "ProfileSet",
    "Source",
    "complete_profiles",
    "load_profile_file",
    "parse_melange",
]

Source = Literal["measured", "imported", "roofline"]


class ProfileSet(BaseModel):
    """T_g[b] tables of several GPU types for one model under one SLO."""

    model: str | None = None
    slo: SLO | None = None
    buckets: list[Bucket] = Field(default_factory=list)
    throughput: dict[str, dict[str, float]] = Field(default_factory=dict)
    source: dict[str, dict[str, Source]] = Field(default_factory=dict)

    def get(self, gpu: str, bucket: str) -> float | None:
        return self.throughput.get(gpu, {}).get(bucket)

    def set(self, gpu: str, bucket: Bucket, value: float, source: Source) -> None:
        name = bucket.name
        if value < 0:
            raise ValueError(f"throughput of {gpu} on {name} is negative: {value}")
        ranges = (bucket.input_tokens, bucket.output_tokens)  # what the name is made of
        if name not in self.throughput.get(gpu, {}) and all(
            (b.input_tokens, b.output_tokens) != ranges for b in self.buckets
        ):
            self.buckets.append(bucket.model_copy(update={"share": 0.0}))
        self.throughput.setdefault(gpu, {})[name] = value
        self.source.setdefault(gpu, {})[name] = source

    def points(self, gpu: str) -> list[MeasuredPoint]:
        """The entries of `gpu` that were not produced by the model."""
        by_name = {b.name: b for b in self.buckets}
        return [
            MeasuredPoint(bucket=by_name[name], throughput=value)
            for name, value in self.throughput.get(gpu, {}).items()
            if self.source.get(gpu, {}).get(name) != "roofline" and name in by_name
        ]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


@dataclass(frozen=True)
class MelangeInput:
    """Everything a Mélange ``example.json`` holds."""

    profiles: ProfileSet
    workload: Workload
    gpu_types: list[GPUType]
    slice_factor: int


def _edges(given: Any, count: int, label: str) -> list[int]:
    if given is not None:
        edges = [int(e) for e in given]
        if len(edges) != count + 1:
            raise ValueError(f"{label}: {count + 1} edges are needed, got {len(edges)}")
        return edges
    edges = list(MELANGE_EDGES)
    while len(edges) < count + 1:
        edges.append(edges[-1] * 2)
    return edges[: count + 1]


def parse_melange(data: dict[str, Any]) -> MelangeInput:
    """Read the Mélange release's solver input (``gpu_info``, ``workload_distribution``…)."""
    try:
        gpu_info = data["gpu_info"]
        grid = data["workload_distribution"]
        rate = float(data["total_request_rate"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"not a Mélange profile: {exc!s} missing or wrong (needs gpu_info, "
            "workload_distribution, total_request_rate)"
        ) from exc
    if not grid or not isinstance(grid, list) or not all(isinstance(r, list) for r in grid):
        raise ValueError("workload_distribution must be a grid (list of rows)")
    rows, cols = len(grid), len(grid[0])
    input_edges = _edges(data.get("input_token_edges"), rows, "input_token_edges")
    output_edges = _edges(data.get("output_token_edges"), cols, "output_token_edges")
    workload = Workload.from_grid(rate, input_edges, output_edges, grid)
    known = {g.name.lower(): g for g in default_catalog()}
    profiles = ProfileSet(buckets=[b.model_copy(update={"share": 0.0}) for b in workload.buckets])
    gpu_types = []
    for name, info in gpu_info.items():
        tputs = info.get("tputs")
        if (
            not isinstance(tputs, list)
            or len(tputs) != rows
            or any(not isinstance(r, list) or len(r) != cols for r in tputs)
        ):
            raise ValueError(f"gpu_info.{name}.tputs must be a {rows}×{cols} grid")
        base = known.get(name.lower())
        try:
            gpu = GPUType(
                name=name,
                price_per_hour=float(info["cost"]),
                memory_gib=base.memory_gib if base else None,
                bf16_tflops=base.bf16_tflops if base else None,
                mem_bandwidth_gbps=base.mem_bandwidth_gbps if base else None,
            )
        except (KeyError, ValidationError) as exc:
            raise ValueError(f"gpu_info.{name}: needs a non-negative cost ({exc!s})") from exc
        gpu_types.append(gpu)
        for i in range(rows):
            for j in range(cols):
                bucket = workload.buckets[i * cols + j]
                profiles.set(name, bucket, float(tputs[i][j]), "imported")
    slice_factor = int(data.get("slice_factor", 1))
    if slice_factor < 1:
        raise ValueError(f"slice_factor must be ≥ 1, got {slice_factor}")
    return MelangeInput(profiles, workload, gpu_types, slice_factor)


def load_profile_file(path: str | Path) -> ProfileSet | MelangeInput:
    """A profile file of either schema: our `ProfileSet`, or a Mélange solver input."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the profile file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile file holds one JSON object")
    if "gpu_info" in data:
        return parse_melange(data)
    try:
        return ProfileSet.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a profile file: {exc}") from exc


def complete_profiles(
    *,
    model: ModelSpec | None,
    gpu_types: Sequence[GPUType],
    buckets: Sequence[Bucket],
    slo: SLO,
    profiles: ProfileSet | None = None,
) -> ProfileSet:
    """T_g[b] for every type and bucket: given entries kept, the rest from the roofline.

    The roofline is calibrated by each type's given entries first. Without a model, or for
    a type without hardware figures, a missing entry stays missing (= cannot serve).
    """
    given = profiles or ProfileSet(slo=slo)
    if given.slo is not None and given.slo != slo:
        raise ValueError(
            f"the profiles were measured under the SLO {given.slo.describe()}, "
            f"not {slo.describe()}: profile again, or plan for their SLO"
        )
    result = ProfileSet(model=model.name if model else given.model, slo=slo)
    roofline = RooflineModel(model) if model is not None else None
    if roofline is not None:
        for gpu in gpu_types:
            points = given.points(gpu.name)
            if points and gpu.has_hardware_figures:
                roofline = roofline.calibrate(gpu, points, slo)
    for gpu in gpu_types:
        for bucket in buckets:
            value = given.get(gpu.name, bucket.name)
            if value is not None:
                source = given.source.get(gpu.name, {}).get(bucket.name, "imported")
                result.set(gpu.name, bucket, value, source)
            elif roofline is not None and gpu.has_hardware_figures:
                result.set(gpu.name, bucket, roofline.throughput(gpu, bucket, slo), "roofline")
    return result
