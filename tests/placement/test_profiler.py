"""The profiler's search and measurement, against a stand-in runtime.

`StandInRuntime` (tests/placement/standin_runtime.py) is a stand-in for the runtime: a real
HTTP server speaking the runtime protocol whose step time grows with the number of running
requests, so the right answer is known. test_profiler_real_runtime.py profiles the real one.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.placement.profiler import Measurement, Profiler, search_max_rate
from lmaas.placement.profiles import ProfileSet
from lmaas.placement.specs import SLO
from lmaas.placement.workload import Bucket
from tests.placement.standin_runtime import ServerThread, StandInRuntime

SLO_TPOT = SLO(metric="tpot", statistic="mean", target_ms=30)
BUCKET = Bucket(input_tokens=(0, 16), output_tokens=(8, 16))


def _fake_measure(capacity: float, log: list[float]):
    """A runtime whose TPOT is 10 ms up to `capacity` req/s and 100 ms beyond."""

    def measure(rate: float) -> Measurement:
        log.append(rate)
        tpot = 10.0 if rate <= capacity else 100.0
        return Measurement(rate=rate, num_requests=10, tpot_mean_ms=tpot, tpot_p99_ms=tpot)

    return measure


def test_search_stops_at_the_first_failing_rate_and_keeps_the_last_that_held() -> None:
    log: list[float] = []
    best, done = search_max_rate(
        _fake_measure(10, log), slo=SLO_TPOT, rates=[1, 2, 4, 8, 16, 32], refine_steps=0
    )
    assert best == 8
    assert log == [1, 2, 4, 8, 16]  # 32 never tried
    assert len(done) == 5


def test_search_bisects_between_the_last_pass_and_the_first_failure() -> None:
    log: list[float] = []
    best, _ = search_max_rate(
        _fake_measure(12, log), slo=SLO_TPOT, rates=[1, 2, 4, 8, 16], refine_steps=3
    )
    assert 8 < best <= 12
    assert all(8 < r < 16 for r in log[5:])


def test_search_reports_zero_when_even_the_lowest_rate_fails() -> None:
    best, done = search_max_rate(_fake_measure(0.5, []), slo=SLO_TPOT, rates=[1, 2, 4])
    assert best == 0.0
    assert len(done) == 1


def test_search_judges_the_statistic_it_is_given() -> None:
    def measure(rate: float) -> Measurement:
        # mean TPOT is fine everywhere, p99 only up to 4 req/s; errors beyond 8
        return Measurement(
            rate=rate,
            num_requests=10,
            tpot_mean_ms=10,
            tpot_p99_ms=10 if rate <= 4 else 50,
            errors=0 if rate <= 8 else 1,
        )

    rates = [1, 2, 4, 8, 16]
    mean = SLO(metric="tpot", statistic="mean", target_ms=25)
    p99 = SLO(metric="tpot", statistic="p99", target_ms=25)
    assert search_max_rate(measure, slo=mean, rates=rates, refine_steps=0)[0] == 8
    assert search_max_rate(measure, slo=p99, rates=rates, refine_steps=0)[0] == 4


def test_profiler_finds_the_stand_in_runtimes_capacity() -> None:
    """Step = 5 ms + 2 ms × running. At 16 req/s ~1.7 requests run (TPOT ≈ 8 ms); at 256
    req/s the queue grows without bound (TPOT ≫ 30 ms). So T = 16 on rates 8, 16, 256."""
    standin = StandInRuntime(base_ms=5, per_seq_ms=2)
    with ServerThread(standin.app()) as server:
        profiler = Profiler(
            server.url,
            gpu="standin-gpu",
            slo=SLO_TPOT,
            buckets=[BUCKET],
            rates=[8, 16, 256],
            num_requests=30,
            refine_steps=0,
        )
        result = profiler.run()
    assert result.get("standin-gpu", BUCKET.name) == 16
    assert result.source["standin-gpu"][BUCKET.name] == "measured"
    by_rate = {m.rate: m for m in profiler.measurements[BUCKET.name]}
    assert by_rate[16].tpot_mean_ms < 30 < by_rate[256].tpot_mean_ms
    assert by_rate[16].errors == 0
    # requests had the bucket's sizes, fixed by prompt_token_ids and max_tokens + ignore_eos
    for request in standin.requests_seen:
        assert 0 < len(request.prompt_token_ids or []) <= 16
        assert 8 < (request.sampling.max_tokens or 0) <= 16
        assert request.sampling.ignore_eos


def test_profiler_reports_zero_when_the_slo_is_out_of_reach() -> None:
    with ServerThread(StandInRuntime(base_ms=30, per_seq_ms=1).app()) as server:
        profiler = Profiler(
            server.url,
            gpu="slow",
            slo=SLO_TPOT,
            buckets=[BUCKET],
            rates=[4, 8],
            num_requests=6,
            refine_steps=0,
        )
        result = profiler.run()
    assert result.get("slow", BUCKET.name) == 0.0


def test_profile_command_writes_a_file_that_plan_reads(tmp_path) -> None:
    out = tmp_path / "profile.json"
    runner = CliRunner()
    with ServerThread(StandInRuntime(base_ms=5, per_seq_ms=2).app()) as server:
        result = runner.invoke(
            app,
            [
                "profile",
                "--runtime-url",
                server.url,
                "--gpu-type",
                "A10G",
                "--workload",
                str(_write_workload(tmp_path)),
                "--slo-ms",
                "30",
                "--rates",
                "8,16,256",
                "--requests",
                "30",
                "--refine",
                "0",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    saved = ProfileSet.model_validate_json(out.read_text())
    assert saved.get("A10G", BUCKET.name) == 16
    assert saved.slo == SLO_TPOT

    planned = runner.invoke(
        app,
        [
            "plan",
            "--profile",
            str(out),
            "--workload",
            str(_write_workload(tmp_path)),
            "--rate",
            "40",
            "--gpu",
            "A10G",
            "--json",
        ],
    )
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    # 40 req/s at 16 req/s per A10G (measured; the profile's SLO is used) = 3 instances
    assert plan["counts"] == {"A10G": 3}


def test_profile_command_explains_a_missing_runtime(tmp_path) -> None:
    from tests.conftest import free_port

    result = CliRunner().invoke(
        app,
        [
            "profile",
            "--runtime-url",
            f"http://127.0.0.1:{free_port()}",
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert result.exit_code == 1
    assert "no runtime answers" in result.output


def _write_workload(folder) -> object:
    path = folder / "workload.json"
    path.write_text(
        json.dumps(
            {
                "rate": 1,
                "buckets": [{"input_tokens": [0, 16], "output_tokens": [8, 16], "share": 1.0}],
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def _quiet_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
