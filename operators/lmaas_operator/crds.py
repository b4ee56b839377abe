"""The CustomResourceDefinitions of lmaas, generated from the pydantic models.

`python -m lmaas_operator.crds [--check] [FOLDER]` writes (or checks) one YAML file per
kind under `charts/lmaas/crds/`; a test keeps the files equal to this output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lmaas_operator import resources as r
from lmaas_operator.schema import structural_schema

__all__ = ["GROUP", "KINDS", "VERSION", "Kind", "crd_manifest", "kind_by_name", "render_crds"]

GROUP = "lmaas.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
READY = '.status.conditions[?(@.type=="Ready")].status'


@dataclass(frozen=True)
class Kind:
    """One custom resource kind: its names, scope, models and `kubectl get` columns."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[tuple[str, str, str], ...] = field(default=())  # (name, type, jsonPath)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _age() -> tuple[str, str, str]:
    return ("Age", "date", ".metadata.creationTimestamp")


KINDS: tuple[Kind, ...] = (
    Kind(
        "Tenant",
        "tenants",
        ("tn",),
        False,
        r.TenantSpec,
        r.TenantStatus,
        "A tenant of lmaas: quotas, tier and allowed models; it gets its own namespace, "
        "an entry in the platform database and a first API key.",
        (
            ("Namespace", "string", ".status.namespace"),
            ("Tier", "string", ".spec.tier"),
            ("Ready", "string", READY),
            _age(),
        ),
    ),
    Kind(
        "Model",
        "models",
        ("lmodel", "lm"),
        False,
        r.ModelSpec,
        r.ModelStatus,
        "A base model that ModelServices can serve: where its weights are and its shape.",
        (
            ("Architecture", "string", ".spec.architecture"),
            ("Params", "integer", ".spec.numParams"),
            ("Ready", "string", READY),
            _age(),
        ),
    ),
    Kind(
        "GPUType",
        "gputypes",
        ("gput",),
        False,
        r.GPUTypeSpec,
        r.GPUTypeStatus,
        "An accelerator type the planner may use: memory, price per hour, node selector.",
        (
            ("Memory", "number", ".spec.memoryGib"),
            ("Price", "number", ".spec.pricePerHour"),
            ("Max", "integer", ".spec.maxCount"),
            ("Ready", "string", READY),
            _age(),
        ),
    ),
    Kind(
        "ModelService",
        "modelservices",
        ("msvc", "ms"),
        True,
        r.ModelServiceSpec,
        r.ModelServiceStatus,
        "Serves a Model with adapters under a latency SLO, on the GPU mix the planner picks; "
        "minReplicas 0 makes it serverless.",
        (
            ("Model", "string", ".spec.model"),
            ("Replicas", "integer", ".status.totalReplicas"),
            ("Cost/h", "number", ".status.costPerHour"),
            ("Req/s", "number", ".status.observedRate"),
            ("Endpoint", "string", ".status.endpoint"),
            ("Ready", "string", READY),
            _age(),
        ),
    ),
    Kind(
        "Adapter",
        "adapters",
        ("adp",),
        True,
        r.AdapterSpec,
        r.AdapterStatus,
        "A LoRA adapter of the tenant, served by a ModelService and loaded on as many "
        "replicas as its traffic needs.",
        (
            ("Service", "string", ".spec.service"),
            ("Replicas", "integer", ".status.replicas"),
            ("Rate", "number", ".status.requestRate"),
            ("Ready", "string", READY),
            _age(),
        ),
    ),
    Kind(
        "FineTuneJob",
        "finetunejobs",
        ("ftj",),
        True,
        r.FineTuneJobSpec,
        r.FineTuneJobStatus,
        "A fine-tune of a Model (QFT or LoRA) run by the workers; a succeeded LoRA job "
        "creates its Adapter.",
        (
            ("Method", "string", ".spec.method"),
            ("Model", "string", ".spec.model"),
            ("Status", "string", ".status.phase"),
            ("Progress", "string", ".status.progress"),
            _age(),
        ),
    ),
)


def kind_by_name(name: str) -> Kind:
    for kind in KINDS:
        if name in (kind.kind, kind.plural, kind.singular):
            return kind
    raise KeyError(f"unknown lmaas kind {name!r}")


def crd_manifest(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (apiextensions.k8s.io/v1)."""
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    spec_schema["description"] = kind.spec.__doc__ or kind.description
    status_schema["description"] = kind.status.__doc__ or "Written by the operator."
    schema = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this object: lmaas.io/v1alpha1.",
            },
            "kind": {"type": "string", "description": f"Kind of this object: {kind.kind}."},
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/part-of": "lmaas"},
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["lmaas"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p} for n, t, p in kind.columns
                    ],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    header = "# Generated by `python -m lmaas_operator.crds` from lmaas_operator.resources; do not edit.\n"
    return {
        f"{kind.crd_name}.yaml": header + yaml.safe_dump(crd_manifest(kind), sort_keys=False)
        for kind in KINDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", default="charts/lmaas/crds", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_crds().items():
        path = args.folder / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(
            "stale CRDs: " + ", ".join(map(str, stale)) + "; run python -m lmaas_operator.crds",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
