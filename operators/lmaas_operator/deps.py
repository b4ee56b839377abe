"""What every reconciler needs, built once when the operator starts."""

from __future__ import annotations

from dataclasses import dataclass

from lmaas.config import Settings
from lmaas.store import Database
from lmaas_operator.adapter_placement import RuntimeAdapterClient
from lmaas_operator.kube import KubeClient
from lmaas_operator.settings import OperatorSettings

__all__ = ["Deps"]


@dataclass
class Deps:
    kube: KubeClient
    db: Database
    settings: Settings
    operator: OperatorSettings
    runtime: RuntimeAdapterClient

    def close(self) -> None:
        self.kube.close()
        self.runtime.close()
        self.db.dispose()
