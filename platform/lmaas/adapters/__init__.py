"""LoRA adapters as files: safe archive extraction, safetensors headers, validation.

A library part: the gateway validates uploads with it, the runtime re-checks what it
loads, the worker verifies stored tensors, the operator checks `Adapter` sources. Nothing
here imports torch.
"""

from lmaas.adapters.archive import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterArchiveError,
    extract_adapter_archive,
)
from lmaas.adapters.errors import AdapterError
from lmaas.adapters.safetensors_header import (
    SafetensorsError,
    TensorInfo,
    read_safetensors_header,
    read_tensor,
)
from lmaas.adapters.validation import (
    AdapterSpec,
    AdapterValidationError,
    parse_adapter,
    validate_adapter,
)
from lmaas.adapters.weights import verify_adapter_weights

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterArchiveError",
    "AdapterError",
    "AdapterSpec",
    "AdapterValidationError",
    "SafetensorsError",
    "TensorInfo",
    "extract_adapter_archive",
    "parse_adapter",
    "read_safetensors_header",
    "read_tensor",
    "validate_adapter",
    "verify_adapter_weights",
]
