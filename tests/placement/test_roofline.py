"""The roofline model: monotone in every direction it should be, and calibrated by points."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmaas.placement import (
    SLO,
    Bucket,
    Efficiency,
    GPUType,
    ProfileSet,
    RooflineModel,
    Workload,
    complete_profiles,
    default_catalog,
    model_by_name,
)

LLAMA = model_by_name("llama-2-7b")
CATALOG = {g.name: g for g in default_catalog()}
A100 = CATALOG["A100-80GB"]


def _bucket(i: int, o: int) -> Bucket:
    return Bucket(input_tokens=(i, i + 50), output_tokens=(o, o + 50))


sizes = st.integers(0, 1800)
slos = st.builds(
    SLO,
    metric=st.sampled_from(["tpot", "ttft"]),
    statistic=st.sampled_from(["mean", "p99"]),
    target_ms=st.floats(20, 2000),
)
gpus = st.sampled_from(list(CATALOG.values()))


@settings(max_examples=150, deadline=None)
@given(i=sizes, o=sizes, di=st.integers(1, 1000), do=st.integers(1, 1000), slo=slos, gpu=gpus)
def test_more_tokens_never_raise_throughput(i, o, di, do, slo, gpu) -> None:
    model = RooflineModel(LLAMA)
    base = model.throughput(gpu, _bucket(i, o), slo)
    assert model.throughput(gpu, _bucket(i + di, o), slo) <= base * (1 + 1e-9)
    assert model.throughput(gpu, _bucket(i, o + do), slo) <= base * (1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(i=sizes, o=sizes, slo=slos, gpu=gpus, looser=st.floats(1.0, 5.0))
def test_a_looser_slo_never_lowers_throughput(i, o, slo, gpu, looser) -> None:
    model = RooflineModel(LLAMA)
    loose = slo.model_copy(update={"target_ms": slo.target_ms * looser})
    assert model.throughput(gpu, _bucket(i, o), loose) >= model.throughput(
        gpu, _bucket(i, o), slo
    ) * (1 - 1e-9)
    p99 = slo.model_copy(update={"statistic": "p99"})
    mean = slo.model_copy(update={"statistic": "mean"})
    assert model.throughput(gpu, _bucket(i, o), p99) <= model.throughput(
        gpu, _bucket(i, o), mean
    ) * (1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(
    i=sizes,
    o=sizes,
    slo=slos,
    field=st.sampled_from(["memory_gib", "bf16_tflops", "mem_bandwidth_gbps"]),
    factor=st.floats(1.0, 4.0),
)
def test_better_hardware_never_lowers_throughput(i, o, slo, field, factor) -> None:
    model = RooflineModel(LLAMA)
    better = A100.model_copy(update={field: getattr(A100, field) * factor})
    assert model.throughput(better, _bucket(i, o), slo) >= model.throughput(
        A100, _bucket(i, o), slo
    ) * (1 - 1e-9)


def test_a_bigger_model_is_slower_and_one_too_big_serves_nothing() -> None:
    slo = SLO(target_ms=120)
    bucket = _bucket(100, 100)
    small = RooflineModel(model_by_name("llama-2-7b")).throughput(A100, bucket, slo)
    large = RooflineModel(model_by_name("llama-2-13b")).throughput(A100, bucket, slo)
    assert 0 < large < small
    assert RooflineModel(model_by_name("llama-2-13b")).throughput(CATALOG["T4"], bucket, slo) == 0


def test_figures_are_plausible_for_llama_2_7b() -> None:
    """Decode of a 13.5 GB model is bandwidth-bound: ~30 ms/token on an A10G (600 GB/s at
    75 %), so a 40 ms TPOT holds on an A10G but not on a T4 (320 GB/s)."""
    model = RooflineModel(LLAMA)
    tight = SLO(target_ms=40)
    chat = _bucket(50, 100)
    assert model.throughput(CATALOG["T4"], chat, tight) == 0
    assert model.throughput(CATALOG["A10G"], chat, tight) > 0
    assert model.throughput(CATALOG["H100-80GB"], chat, tight) > model.throughput(A100, chat, tight)
    # contexts that do not fit the model's 4096 tokens are never served
    assert (
        model.throughput(A100, Bucket(input_tokens=(4000, 4090), output_tokens=(0, 100)), tight)
        == 0
    )


def test_calibration_recovers_the_efficiency_behind_measured_points() -> None:
    slo = SLO(target_ms=120)
    truth = RooflineModel(LLAMA, Efficiency(compute=0.3, bandwidth=0.45))
    measured = [_bucket(0, 0), _bucket(900, 0), _bucket(0, 900), _bucket(1800, 400)]
    held_out = [_bucket(400, 200), _bucket(1200, 50), _bucket(50, 1500)]
    from lmaas.placement.roofline import MeasuredPoint

    points = [MeasuredPoint(bucket=b, throughput=truth.throughput(A100, b, slo)) for b in measured]
    default = RooflineModel(LLAMA)
    fitted = default.calibrate(A100, points, slo)
    for b in held_out:
        true = truth.throughput(A100, b, slo)
        before = default.throughput(A100, b, slo)
        after = fitted.throughput(A100, b, slo)
        assert abs(after - true) < abs(before - true)
        assert after == pytest.approx(true, rel=0.1)
    # a type never measured takes the fitted efficiencies (they belong mostly to the engine)
    h100 = CATALOG["H100-80GB"]
    b = held_out[0]
    assert abs(fitted.throughput(h100, b, slo) - truth.throughput(h100, b, slo)) < abs(
        default.throughput(h100, b, slo) - truth.throughput(h100, b, slo)
    )


def test_complete_profiles_keeps_measurements_and_fills_the_rest() -> None:
    slo = SLO(target_ms=120)
    workload = Workload.short_chat(1)
    measured_bucket = workload.buckets[7]
    given = ProfileSet(slo=slo)
    given.set("A10G", measured_bucket, 5.0, "measured")
    unknown = GPUType(name="mystery", price_per_hour=1.0)  # no hardware figures, no profile
    types = [CATALOG["A10G"], CATALOG["L4"], unknown]
    full = complete_profiles(
        model=LLAMA, gpu_types=types, buckets=workload.buckets, slo=slo, profiles=given
    )
    assert full.get("A10G", measured_bucket.name) == 5.0
    assert full.source["A10G"][measured_bucket.name] == "measured"
    for b in workload.buckets:
        if b.name != measured_bucket.name:
            assert full.source["A10G"][b.name] == "roofline"
        assert full.source["L4"][b.name] == "roofline"
        assert full.get("mystery", b.name) is None
    # the one measured point (slower than the default model says) pulled the A10G's other
    # buckets down with it (and the L4, never measured, takes the fitted efficiencies)
    a10g = RooflineModel(LLAMA)
    neighbour = workload.buckets[8]
    assert a10g.throughput(CATALOG["A10G"], measured_bucket, slo) > 5.0
    assert full.get("A10G", neighbour.name) < a10g.throughput(CATALOG["A10G"], neighbour, slo)
