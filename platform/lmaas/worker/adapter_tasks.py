"""Task `lmaas.adapters.verify`: read a stored adapter's tensors and mark it verified or failed.

The gateway validates an upload's header and shapes before storing it; this task reads every
value (which the gateway does not, to answer fast) and checks it is finite. The adapter row
is the truth: ``verified_at`` set on success, ``status = "failed"`` on a broken adapter. A
missing adapter (deleted meanwhile) is not an error.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from celery import Task, shared_task
from sqlalchemy.exc import SQLAlchemyError

from lmaas.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, verify_adapter_weights
from lmaas.store.artifacts import fetch_folder
from lmaas.store.models import Adapter, utcnow
from lmaas.tasks import VERIFY_ADAPTER
from lmaas.worker.app import worker_context

__all__ = ["verify_adapter"]

log = logging.getLogger(__name__)


@shared_task(
    name=VERIFY_ADAPTER,
    bind=True,
    autoretry_for=(SQLAlchemyError, OSError),  # database or store unreachable: try later
    retry_backoff=2,
    max_retries=5,
)
def verify_adapter(self: Task, adapter_id: str) -> str:
    """Verify the adapter `adapter_id`; returns its new status (``missing`` if deleted)."""
    ctx = worker_context(self.app)
    with ctx.db.session() as session:
        adapter = session.get(Adapter, adapter_id)
        if adapter is None:
            return "missing"
        uri = adapter.uri
    with tempfile.TemporaryDirectory(prefix="lmaas-verify-") as tmp:
        try:
            folder = fetch_folder(uri, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], Path(tmp))
        except FileNotFoundError:
            return "missing"  # deleted between the lookup and the fetch
        try:
            num_values = verify_adapter_weights(folder)
            problem = None
        except AdapterError as exc:
            problem = exc.message
    with ctx.db.session() as session:
        adapter = session.get(Adapter, adapter_id)
        if adapter is None:
            return "missing"
        if problem is None:
            adapter.verified_at = utcnow()
            log.info("adapter %s verified (%d values)", adapter_id, num_values)
        else:
            adapter.status = "failed"
            log.warning("adapter %s failed verification: %s", adapter_id, problem)
        return adapter.status
