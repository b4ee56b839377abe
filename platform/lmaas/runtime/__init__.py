"""The runtime: one process serving one base model over the internal API of `lmaas.protocol`."""

from lmaas.runtime.app import create_app
from lmaas.runtime.engines import ENGINES, EngineFactory, create_engine

__all__ = ["ENGINES", "EngineFactory", "create_app", "create_engine"]
