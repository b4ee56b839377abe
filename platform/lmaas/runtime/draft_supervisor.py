"""The runtime's side of online distillation: record, flush, queue OSD rounds, hot-swap drafts.

`DraftSupervisor` attaches an `OSDRecorder` to the engine's speculator (when it speculates
with a draft model, or may: `LMAAS_SPECULATION_PROPOSER=auto` before any draft was built,
when the first draft that appears replaces prompt lookup) and runs two loops beside the
engine:

- every `LMAAS_OSD_FLUSH_S` (and on shutdown) the recorder's buffers are written to
  `<artifact URL>/osd/<tenant>/<model>/`; a (tenant, model) whose records waiting there
  reach `LMAAS_OSD_ROUND_RECORDS`, or that has waited `LMAAS_OSD_ROUND_PERIOD_S` since its
  last round, gets an `lmaas.speculation.osd_round` task queued (by name: the runtime does
  not import the worker). Records on disk are counted, so several replicas of a service
  share the count; a round is queued again by count only for as many new records (a round
that did not help keeps its records), and by time at most once a period.
- every `LMAAS_DRAFT_POLL_S` the newest draft version is looked up — the tenant's own
  lineage first for a runtime dedicated to one tenant (`LMAAS_DRAFT_TENANT`), then the
  model's shared draft — and a newer one is loaded off the step thread and swapped in
  between two steps (`AsyncEngine.swap_draft`): requests in flight keep running, and
  greedy outputs do not change (verification keeps them exactly the target's).

Figures: `lmaas_runtime_draft_version`, `lmaas_runtime_draft_swaps_total`,
`lmaas_runtime_osd_records_flushed_total` and `lmaas_runtime_osd_rounds_queued_total`
(per tenant) on the runtime's registry. Acceptance per tenant is the engine's
`lmaas_spec_tenant_acceptance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import fsspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from lmaas.config import Settings
from lmaas.engine.speculation.osd_buffer import OSDRecorder, list_osd_files
from lmaas.finetune.draft_builder import latest_draft_version
from lmaas.finetune.draft_locations import DraftLocations
from lmaas.tasks import OSD_ROUND, create_celery, send_task

__all__ = ["DraftSupervisor"]

log = logging.getLogger(__name__)

SendTask = Callable[[str, str], None]  # (tenant_id, model): queue an OSD round


class _Recorder(OSDRecorder):
    """An `OSDRecorder` that remembers which tenants it saw (whose files to count)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenants: set[str] = set()

    def observe(
        self, request_id: Any, tenant_id: str, start: int, num_proposed: int, num_accepted: int
    ) -> None:
        self.tenants.add(tenant_id)
        super().observe(request_id, tenant_id, start, num_proposed, num_accepted)


def _count_records(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with fsspec.open(path, "rb") as f:
            total += f.read().count(b"\n")
    return total


class DraftSupervisor:
    """OSD recording and draft hot swaps for one runtime engine (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        *,
        registry: CollectorRegistry | None = None,
        send: SendTask | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine  # an AsyncEngine (anything with `speculator` and `swap_draft`)
        self.model = settings.model_name
        self.locations = DraftLocations.from_settings(settings)
        self._send = send or self._send_with_celery
        self._celery: Any = None
        self.recorder: _Recorder | None = None
        self.serving: tuple[str, int] | None = None  # (draft root, version) in the engine
        self._round_state: dict[str, tuple[float, int]] = {}  # tenant → (queued at, records)
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        reg = registry if registry is not None else CollectorRegistry()
        self.version_gauge = Gauge(
            "lmaas_runtime_draft_version",
            "Version of the draft model the engine speculates with (0 = none or unversioned).",
            registry=reg,
        )
        self.swaps = Counter(
            "lmaas_runtime_draft_swaps",
            "Newer draft versions swapped into the engine.",
            registry=reg,
        )
        self.records_flushed = Counter(
            "lmaas_runtime_osd_records_flushed",
            "OSD records (finished requests that speculated) written for the worker.",
            registry=reg,
        )
        self.rounds_queued = Counter(
            "lmaas_runtime_osd_rounds_queued",
            "OSD rounds (lmaas.speculation.osd_round) queued, per tenant.",
            ["tenant"],
            registry=reg,
        )

    # Lifecycle ---------------------------------------------------------------------------

    @property
    def speculator(self) -> Any:
        return getattr(self.engine, "speculator", None)

    def _draft_version(self) -> int | None:
        """The version of the draft the engine proposes with; None without a draft model."""
        spec = self.speculator
        if spec is None or getattr(spec.proposer, "kind", None) != "draft":
            return None
        draft = getattr(getattr(spec.proposer, "backend", None), "draft", None)
        return int(getattr(draft, "version", 0) or 0)

    async def start(self) -> None:
        spec = self.speculator
        if spec is None:
            return
        version = self._draft_version()
        if version is not None:
            self.serving = (self.locations.shared_drafts(self.model), version)
            self.version_gauge.set(version)
        elif self.settings.speculation_proposer != "auto":
            log.info("draft supervisor: prompt lookup only; no draft to record for or swap")
            return
        # With `auto` and no draft yet, the first one built is swapped in when it appears.
        s = self.settings
        if s.osd_flush_s > 0:  # the speculator records only while a draft proposes
            self.recorder = _Recorder(self.locations.osd, self.model)
            spec.osd = self.recorder
            self._tasks.append(asyncio.create_task(self._every(s.osd_flush_s, self.flush)))
        if s.draft_poll_s > 0:
            self._tasks.append(asyncio.create_task(self._every(s.draft_poll_s, self.poll)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.recorder is not None:
            try:
                await self.flush(queue_rounds=False)
            except Exception:
                log.exception("draft supervisor: the last OSD flush failed")

    async def _every(self, period: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store or broker hiccup: try again next period
                log.exception("draft supervisor: %s failed", getattr(job, "__name__", job))

    # OSD records -------------------------------------------------------------------------

    async def flush(self, *, queue_rounds: bool = True) -> list[str]:
        """Write the recorder's buffers now; queue the OSD rounds that are due."""
        if self.recorder is None:
            return []
        files = await asyncio.to_thread(self.recorder.flush)
        if files:
            self.records_flushed.inc(await asyncio.to_thread(_count_records, files))
        if queue_rounds:
            for tenant_id in sorted(self.recorder.tenants):
                await self._maybe_queue_round(tenant_id)
        return files

    async def _maybe_queue_round(self, tenant_id: str) -> bool:
        s = self.settings
        files = await asyncio.to_thread(list_osd_files, self.locations.osd, tenant_id, self.model)
        pending = await asyncio.to_thread(_count_records, files) if files else 0
        if pending == 0:
            self._round_state.pop(tenant_id, None)
            return False
        now = time.monotonic()
        queued_at, queued_with = self._round_state.get(tenant_id, (self._started, 0))
        if pending < queued_with:  # the last round consumed what it was queued for
            queued_with = 0
        by_count = s.osd_round_records > 0 and pending - queued_with >= s.osd_round_records
        by_time = s.osd_round_period_s > 0 and now - queued_at >= s.osd_round_period_s
        if not (by_count or by_time):
            return False
        await asyncio.to_thread(self._send, tenant_id, self.model)
        self._round_state[tenant_id] = (now, pending)
        self.rounds_queued.labels(tenant_id).inc()
        log.info(
            "draft supervisor: queued an OSD round for %s/%s (%d records)",
            tenant_id,
            self.model,
            pending,
        )
        return True

    def _send_with_celery(self, tenant_id: str, model: str) -> None:
        if self._celery is None:
            self._celery = create_celery(self.settings)
        send_task(self._celery, OSD_ROUND, tenant_id, model)

    # Draft versions ----------------------------------------------------------------------

    def newest_draft(self) -> tuple[str, int, str] | None:
        """(root, version, folder URL) of the draft this runtime should serve."""
        for root in self.locations.serving_drafts(self.model, self.settings.draft_tenant):
            found = latest_draft_version(root)
            if found is not None:
                return root, found[0], found[1]
        return None

    async def poll(self) -> bool:
        """Swap in a newer draft version if there is one; True if it did."""
        newest = await asyncio.to_thread(self.newest_draft)
        if newest is None or newest[:2] == self.serving:
            return False
        root, version, url = newest
        if self.serving is not None and root == self.serving[0] and version <= self.serving[1]:
            return False
        await self.engine.swap_draft(url)  # loads off the step thread, swaps between steps
        log.info("draft supervisor: swapping in draft v%d from %s", version, root)
        self.serving = (root, version)
        self.version_gauge.set(version)
        self.swaps.inc()
        return True
