"""`lmaas profile` against a real runtime: the batched engine serving a tiny model.

The capacity of a real runtime on a shared CPU is not known in advance, so these tests
check what must hold whatever the machine: every request is served, TTFT and TPOT are
measured, a light rate meets a generous SLO, and an SLO no machine can meet gives zero.
(The exact search and request sizes are tested against a stand-in with a known capacity in
test_profiler.py.)
"""

from __future__ import annotations

from pathlib import Path

from lmaas.config import Settings
from lmaas.placement.profiler import Profiler, measure_rate
from lmaas.placement.specs import SLO
from lmaas.placement.workload import Bucket
from lmaas.runtime import create_app
from tests.conftest import free_port
from tests.helpers.servers import serve_in_thread, wait_http

BUCKET = Bucket(input_tokens=(0, 16), output_tokens=(8, 16))


def _runtime_settings(tmp_path: Path, model_dir: Path) -> Settings:
    return Settings(home=tmp_path / "home", base_model=str(model_dir), model_name="tiny-llama")


def test_profiles_a_real_runtime(tmp_path: Path, tiny_model_dir: Path) -> None:
    app = create_app(_runtime_settings(tmp_path, tiny_model_dir))
    with serve_in_thread(app, free_port()) as url:
        wait_http(f"{url}/readyz")
        generous = SLO(metric="tpot", statistic="mean", target_ms=5_000)
        profiler = Profiler(
            url,
            gpu="cpu",
            slo=generous,
            buckets=[BUCKET],
            rates=[1, 2],
            num_requests=6,
            refine_steps=0,
        )
        result = profiler.run()
        assert result.get("cpu", BUCKET.name) == 2, profiler.measurements
        measured = profiler.measurements[BUCKET.name]
        assert all(m.errors == 0 and m.num_requests == 6 for m in measured)
        assert all(m.tpot_mean_ms is not None and m.tpot_mean_ms > 0 for m in measured)

        impossible = SLO(metric="ttft", statistic="p99", target_ms=0.001)
        zero = Profiler(
            url,
            gpu="cpu",
            slo=impossible,
            buckets=[BUCKET],
            rates=[1],
            num_requests=3,
            refine_steps=0,
        ).run()
        assert zero.get("cpu", BUCKET.name) == 0.0


async def test_one_rate_measures_ttft_and_tpot(tmp_path: Path, tiny_model_dir: Path) -> None:
    app = create_app(_runtime_settings(tmp_path, tiny_model_dir))
    with serve_in_thread(app, free_port()) as url:
        wait_http(f"{url}/readyz")
        m = await measure_rate(
            url, BUCKET, 4.0, num_requests=5, vocab_size=300, max_context=256, seed=1
        )
    assert m.errors == 0 and m.num_requests == 5
    assert m.ttft_mean_ms > 0 and m.tpot_mean_ms > 0 and m.ttft_p99_ms >= m.ttft_mean_ms
