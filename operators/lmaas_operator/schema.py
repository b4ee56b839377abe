"""Structural OpenAPI v3 schemas for CRDs, generated from the pydantic models.

The operator parses every spec with a pydantic model; the CRD's `openAPIV3Schema` is
generated from the same model here, so the two are never written twice. Kubernetes wants
a *structural* schema in OpenAPI 3.0's dialect: no `$ref`, a `type` on every node,
`nullable` instead of a null branch, boolean `exclusiveMinimum`, and no `title`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["CrdModel", "MissingDescriptionError", "structural_schema"]

_DROPPED_KEYS = {"title", "examples", "discriminator"}


class CrdModel(BaseModel):
    """Base of every spec/status model: camelCase in YAML, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class MissingDescriptionError(ValueError):
    """A field of a CRD model has no description, so `kubectl explain` would show nothing."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `model`, ready for a CRD version."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a `$ref` node, keeping the referring node's own description and default."""
    ref = node["$ref"].rsplit("/", 1)[-1]
    target = copy.deepcopy(defs[ref])
    for key, value in node.items():
        if key != "$ref":
            target[key] = value
    return target


def _convert(node: dict[str, Any], defs: dict[str, Any], *, path: str) -> dict[str, Any]:
    if "$ref" in node:
        node = _resolve(node, defs)
    node = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}

    # Optional[X] arrives as anyOf [X, null]: Kubernetes spells it `nullable`.
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if branches is None:
            continue
        non_null = [b for b in branches if b.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"{path}: unions other than Optional[X] cannot be structural")
        del node[key]
        inner = non_null[0]
        if "$ref" in inner:
            inner = _resolve(inner, defs)
        merged = {**inner, **node}
        if len(non_null) < len(branches):
            merged["nullable"] = True
        if merged.get("default", 0) is None:
            del merged["default"]
        node = {k: v for k, v in merged.items() if k not in _DROPPED_KEYS}

    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"

    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props is not None:
            node["properties"] = {}
            for name, child in props.items():
                child_path = f"{path}.{name}"
                converted = _convert(child, defs, path=child_path)
                if not converted.get("description"):
                    raise MissingDescriptionError(
                        f"{child_path} has no description: add a docstring under the field "
                        "(kubectl explain shows it)"
                    )
                node["properties"][name] = converted
            node.pop("additionalProperties", None)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            if extra == {}:
                del node["additionalProperties"]
                node["x-kubernetes-preserve-unknown-fields"] = True
            else:
                node["additionalProperties"] = _convert(extra, defs, path=f"{path}[*]")
        elif extra is True or (props is None and extra is None):
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        node["items"] = _convert(node.get("items", {}), defs, path=f"{path}[]")
    elif kind is None:
        # Any: an arbitrary JSON value.
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node
