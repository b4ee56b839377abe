"""Operator start and stop: kopf settings, and the shared dependencies of the handlers."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from lmaas.config import Settings
from lmaas.store import Database
from lmaas_operator.adapter_placement import RuntimeAdapterClient
from lmaas_operator.deps import Deps
from lmaas_operator.kube import KubeClient
from lmaas_operator.live_traffic import LiveTraffic
from lmaas_operator.naming import FINALIZER, PREFIX
from lmaas_operator.replanning import ReplanRegistry
from lmaas_operator.settings import OperatorSettings

__all__ = ["deps", "set_deps"]

_deps: Deps | None = None


def deps() -> Deps:
    if _deps is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return _deps


def set_deps(value: Deps | None) -> None:
    """Replace the dependencies (tests inject clients here before starting kopf)."""
    global _deps
    _deps = value


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: $KUBECONFIG (read now, not at import)."""
    return (
        kopf.login_with_service_account(**kwargs)
        or kopf.login_with_kubeconfig(**kwargs)
        or kopf.login_via_client(**kwargs)
    )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    op = OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    if op.watch_timeout_s is not None:
        settings.watching.server_timeout = op.watch_timeout_s
        settings.watching.client_timeout = op.watch_timeout_s + 10
        settings.watching.reconnect_backoff = 0.1
    if _deps is None:
        platform = Settings()
        logger.info("connecting to the platform database and the Kubernetes API")
        kube = KubeClient.from_environment()
        set_deps(
            Deps(
                kube=kube,
                db=Database(platform.resolved_database_url),
                settings=platform,
                operator=op,
                runtime=RuntimeAdapterClient(timeout=op.runtime_timeout_s),
                replans=ReplanRegistry(
                    LiveTraffic(kube, op, min_interval_s=min(5.0, op.replan_interval_s / 2)),
                    op,
                ),
            )
        )


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if _deps is not None:
        _deps.close()
    set_deps(None)
