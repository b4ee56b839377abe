"""What a person feeds the planner: catalog files, workload files, profile files, and mistakes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.placement import Bucket, Workload, default_catalog, load_catalog
from lmaas.placement.profiles import load_profile_file, parse_melange


def test_default_catalog_has_the_seven_types_with_prices_and_figures() -> None:
    catalog = {g.name: g for g in default_catalog()}
    assert set(catalog) == {"T4", "L4", "A10G", "A100-40GB", "A100-80GB", "H100-80GB", "H200"}
    for gpu in catalog.values():
        assert gpu.has_hardware_figures
        assert 0 < (gpu.spot_price_per_hour or 0) < gpu.price_per_hour
    assert catalog["A10G"].price_per_hour == pytest.approx(1.01, abs=0.01)  # the paper's


def test_a_catalog_file_overrides_fields_and_adds_types(tmp_path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(
        "A10G: {price_per_hour: 0.5, max_count: 2}\n"
        "MI300X: {memory_gib: 192, price_per_hour: 4.0, bf16_tflops: 1307, "
        "mem_bandwidth_gbps: 5300}\n"
    )
    loaded = {g.name: g for g in load_catalog(path)}
    assert loaded["A10G"].price_per_hour == 0.5
    assert loaded["A10G"].max_count == 2
    assert loaded["A10G"].memory_gib == 24  # kept from the default entry
    assert loaded["MI300X"].memory_gib == 192


def test_a_broken_catalog_entry_is_named(tmp_path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text("- {name: X1, price_per_hour: -1}\n")
    with pytest.raises(ValueError, match="GPU type 'X1'"):
        load_catalog(path)


def test_plan_with_catalog_and_workload_files(tmp_path) -> None:
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text("L4: {max_count: 1}\n")
    workload = tmp_path / "load.yaml"
    workload.write_text(
        "rate: 12\n"
        "buckets:\n"
        "  - {input_tokens: [0, 100], output_tokens: [0, 200], share: 0.75}\n"
        "  - {input_tokens: [100, 1000], output_tokens: [0, 200], share: 0.25}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "plan",
            "--catalog",
            str(catalog),
            "--workload",
            str(workload),
            "--gpu",
            "L4",
            "--gpu",
            "A10G",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert set(plan["counts"]) == {"L4", "A10G"}
    assert plan["counts"]["L4"] <= 1
    assert plan["rate"] == 12


def test_an_infeasible_plan_exits_with_the_reason() -> None:
    result = CliRunner().invoke(
        app, ["plan", "--rate", "50", "--gpu", "T4", "--max-count", "T4=1", "--slo-ms", "120"]
    )
    assert result.exit_code == 1
    assert "availability limits" in result.output and "T4" in result.output


def test_unknown_names_on_the_command_line_are_explained() -> None:
    runner = CliRunner()
    bad_limit = runner.invoke(app, ["plan", "--max-count", "B200=3"])
    assert bad_limit.exit_code == 1 and "unknown GPU types: B200" in bad_limit.output
    bad_model = runner.invoke(app, ["plan", "--model", "gpt-9"])
    assert bad_model.exit_code == 1 and "unknown model 'gpt-9'" in bad_model.output


def test_workload_shares_must_sum_to_one_and_ranges_must_not_repeat() -> None:
    with pytest.raises(ValueError, match=r"sum to 0\.5000"):
        Workload(rate=1, buckets=[Bucket(input_tokens=(0, 10), output_tokens=(0, 10), share=0.5)])
    b = Bucket(input_tokens=(0, 10), output_tokens=(0, 10), share=0.5)
    with pytest.raises(ValueError, match="repeat"):
        Workload(rate=1, buckets=[b, b])
    with pytest.raises(ValueError, match="0 ≤ lo < hi"):
        Bucket(input_tokens=(10, 10), output_tokens=(0, 10))
    assert sum(b.share for b in Workload.short_chat(3).buckets) == pytest.approx(1)
    assert len(Workload.short_chat(3).buckets) == 36


def test_melange_files_may_name_their_token_edges(tmp_path) -> None:
    data = {
        "gpu_info": {"A10G": {"cost": 1.01, "tputs": [[2, 1]]}},
        "workload_distribution": [[0.5, 0.5]],
        "total_request_rate": 3,
        "input_token_edges": [0, 512],
        "output_token_edges": [0, 64, 256],
    }
    parsed = parse_melange(data)
    assert [b.name for b in parsed.workload.buckets] == ["i0-512/o0-64", "i0-512/o64-256"]
    assert parsed.profiles.get("A10G", "i0-512/o64-256") == 1
    assert parsed.gpu_types[0].memory_gib == 24  # hardware figures from the default catalog
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**data, "gpu_info": {"A10G": {"cost": 1, "tputs": [[1]]}}}))
    with pytest.raises(ValueError, match=r"gpu_info.A10G.tputs must be a 1×2 grid"):
        load_profile_file(path)
