"""What every reconciler needs, built once when the operator starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmaas.config import Settings
from lmaas.store import Database
from lmaas_operator.adapter_placement import RuntimeAdapterClient
from lmaas_operator.kube import KubeClient
from lmaas_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from lmaas_operator.replanning import ReplanRegistry

__all__ = ["Deps"]


@dataclass
class Deps:
    kube: KubeClient
    db: Database
    settings: Settings
    operator: OperatorSettings
    runtime: RuntimeAdapterClient
    replans: ReplanRegistry | None = None
    """Live re-planning of planner-sized ModelServices (None: not done)."""

    def close(self) -> None:
        self.kube.close()
        self.runtime.close()
        if self.replans is not None:
            self.replans.traffic.close()
        self.db.dispose()
