"""Which `InferenceEngine` the runtime drives, chosen by ``LMAAS_ENGINE``.

An engine plugs in as one entry of `ENGINES`: a name mapped to a factory
``(settings, model_dir) -> InferenceEngine``. The factory runs in a worker thread while the
runtime reports "loading"; it may take long (weights, warm-up) and should import its engine
module lazily so that other engines' dependencies are not needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lmaas.config import Settings
from lmaas.engine.interface import InferenceEngine

__all__ = ["ENGINES", "EngineFactory", "create_engine"]

EngineFactory = Callable[[Settings, Path], InferenceEngine]


def _reference(settings: Settings, model_dir: Path) -> InferenceEngine:
    from lmaas.engine.reference_engine import ReferenceEngine

    return ReferenceEngine(
        model_dir,
        model_name=settings.model_name,
        device=settings.device,
        dtype=settings.dtype,
        max_lora_rank=settings.max_lora_rank,
    )


ENGINES: dict[str, EngineFactory] = {
    "reference": _reference,
}


def create_engine(settings: Settings, model_dir: Path) -> InferenceEngine:
    """The engine named by `settings.engine`, serving the model folder `model_dir`."""
    factory = ENGINES.get(settings.engine)
    if factory is None:
        raise ValueError(
            f"unknown engine {settings.engine!r} (LMAAS_ENGINE); available: "
            + ", ".join(sorted(ENGINES))
        )
    return factory(settings, model_dir)
