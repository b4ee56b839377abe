"""Deep check of an adapter's weights: every tensor readable, finite, and as its header says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmaas.adapters.archive import ADAPTER_WEIGHTS
from lmaas.adapters.errors import AdapterError
from lmaas.adapters.safetensors_header import read_tensor
from lmaas.adapters.validation import parse_adapter

__all__ = ["verify_adapter_weights"]


def verify_adapter_weights(folder: Path) -> int:
    """Read every tensor of the adapter in `folder`; returns the number of values checked.

    Raises `AdapterError` (code ``non_finite_weights``) if any value is NaN or infinite, or
    the errors of `parse_adapter` if the files are not a LoRA adapter.
    """
    spec = parse_adapter(folder)
    path = folder / ADAPTER_WEIGHTS
    num_values = 0
    for name, info in spec.tensors.items():
        values = read_tensor(path, info)
        if not np.isfinite(values).all():
            raise AdapterError(
                f"tensor {name!r} contains NaN or infinite values: the adapter is broken; "
                "retrain or re-export it and upload it again",
                code="non_finite_weights",
            )
        num_values += values.size
    return num_values
