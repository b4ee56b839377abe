"""The OSD recorder (what reaches the worker's files) and the speculation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lmaas.engine.speculation.metrics import SpecMetrics, SpecStats
from lmaas.engine.speculation.osd_buffer import (
    OSDRecorder,
    list_osd_files,
    load_osd_records,
    remove_osd_files,
)


def _serve(rec: OSDRecorder, rid: str, tenant: str, n_tokens: int = 20) -> list[int]:
    tokens = list(range(100, 100 + n_tokens))
    rec.observe(rid, tenant, start=10, num_proposed=3, num_accepted=1)  # 10 right, 11 wrong
    rec.observe(rid, tenant, start=12, num_proposed=2, num_accepted=2)  # 12, 13 right
    rec.observe(rid, tenant, start=15, num_proposed=0, num_accepted=0)  # nothing proposed
    rec.finish(rid, tokens, prompt_len=8, adapter_id="ad-1")
    return tokens


def test_records_reach_files_per_tenant(tmp_path: Path) -> None:
    root = str(tmp_path / "osd")
    rec = OSDRecorder(root, "SmolLM2", flush_tokens=50)
    tokens = _serve(rec, "r1", "acme")
    _serve(rec, "r2", "zeta")
    assert rec.num_files_written == 0  # under the flush threshold
    for n in range(2):
        _serve(rec, f"a{n}", "acme")  # 3 × 20 tokens ≥ 50 → acme's buffer is written
    acme = list_osd_files(root, "acme", "SmolLM2")
    assert len(acme) == 1
    assert list_osd_files(root, "zeta", "SmolLM2") == []
    records = load_osd_records(acme)
    assert len(records) == 3
    assert records[0].token_ids == tokens
    assert records[0].wrong == [11]
    assert records[0].right == [10, 12, 13]
    assert records[0].adapter_id == "ad-1"
    written = rec.flush()
    assert len(written) == 1 and "zeta" in written[0]
    assert rec.pending_tokens() == 0
    remove_osd_files(acme)
    assert list_osd_files(root, "acme", "SmolLM2") == []


def test_buffers_are_bounded(tmp_path: Path) -> None:
    root = str(tmp_path / "osd")
    rec = OSDRecorder(root, "m", flush_tokens=10_000, max_pending_tokens=100, max_files=2)
    for n in range(30):
        _serve(rec, f"r{n}", "acme")
        assert rec.pending_tokens() <= 100
    assert len(list_osd_files(root, "acme", "m")) == 2  # oldest files pruned


def test_hostile_names_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "osd"
    rec = OSDRecorder(str(root), "../../etc", flush_tokens=1)
    _serve(rec, "r", "../evil")
    files = list(root.rglob("*.jsonl"))
    assert len(files) == 1
    assert root in files[0].parents


def test_fsspec_memory_url() -> None:
    rec = OSDRecorder("memory://osd-test", "m", flush_tokens=1)
    _serve(rec, "r", "acme")
    files = list_osd_files("memory://osd-test", "acme", "m")
    assert files and files[0].startswith("memory://")
    assert load_osd_records(files)[0].wrong == [11]


def test_corrupt_positions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"token_ids": [1, 2], "prompt_len": 1, "wrong": [5], "right": []}))
    with pytest.raises(ValueError, match="outside"):
        load_osd_records([str(path)])


def test_spec_stats_and_prometheus_metrics() -> None:
    registry = CollectorRegistry()
    stats = SpecStats(model="smol", proposer="draft", metrics=SpecMetrics(registry))
    stats.record_verification("acme", 4, 4)
    stats.record_verification("acme", 4, 1)
    stats.record_verification("zeta", 2, 0)
    stats.record_step(0.5, [4, 4, 2, 0], num_generated=4 + 5 + 2 + 1 + 1)
    snap = stats.snapshot()
    assert snap["proposed_tokens"] == 10
    assert snap["accepted_tokens"] == 5
    assert snap["position_acceptance"] == [2 / 3, 1 / 2, 1.0, 1.0]
    assert snap["chosen_k"] == {"0": 1, "2": 1, "4": 2}
    assert snap["tenant_acceptance"] == {"acme": 5 / 8, "zeta": 0.0}
    assert snap["goodput_tokens_per_second"] == pytest.approx(26.0)
    text = generate_latest(registry).decode()
    assert 'lmaas_spec_proposed_tokens_total{model="smol",proposer="draft"} 10.0' in text
    assert 'lmaas_spec_tenant_acceptance{model="smol",proposer="draft",tenant="acme"} 0.625' in text
    assert 'lmaas_spec_position_acceptance{model="smol",position="2",proposer="draft"} 0.5' in text
    assert "lmaas_spec_chosen_k_bucket" in text
    assert "lmaas_spec_goodput_tokens_per_second" in text
