"""The CRDs: generated from the spec models, structural, explainable, and the examples fit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from lmaas_operator import crds
from lmaas_operator.schema import CrdModel, MissingDescriptionError, structural_schema

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "charts" / "lmaas" / "crds"
EXAMPLES = ROOT / "charts" / "lmaas" / "examples"


def _examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _walk(node: dict[str, Any], path: str = "$"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused (what the API server would silently prune)."""
    schema = copy.deepcopy(schema)
    for _, node in _walk(schema):
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    return schema


def test_crd_files_are_the_generated_ones() -> None:
    rendered = crds.render_crds()
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert on_disk == rendered, "stale CRDs: run `python -m lmaas_operator.crds`"
    assert crds.main(["--check", str(CRD_DIR)]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    crds.main([str(tmp_path)])
    (tmp_path / "tenants.lmaas.io.yaml").write_text("# edited by hand\n")
    assert crds.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_schema_is_structural_and_explained(kind: crds.Kind) -> None:
    crd = crds.crd_manifest(kind)
    kubernetes_validate.validate(crd, "1.30", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert node.get("description") or path.endswith("[]") or path.endswith("{}"), path
    status = schema["properties"]["status"]["properties"]
    assert "conditions" in status
    assert crd["spec"]["names"]["shortNames"]
    for column in version["additionalPrinterColumns"]:
        parts = column["jsonPath"].split("[")[0].strip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            node = node["properties"][part]
        assert node, column


def test_every_field_needs_a_description() -> None:
    class Bad(CrdModel):
        documented: int = 0
        """Has one."""
        undocumented: int = 0

    with pytest.raises(MissingDescriptionError, match="undocumented"):
        structural_schema(Bad)


def test_optional_fields_become_nullable_and_bounds_openapi_3_0() -> None:
    schema = structural_schema(crds.kind_by_name("ModelService").spec)
    scaling = schema["properties"]["scaling"]["properties"]
    assert scaling["maxReplicas"]["nullable"] is True
    target = schema["properties"]["slo"]["properties"]["targetMs"]
    assert target["minimum"] == 0 and target["exclusiveMinimum"] is True


def test_examples_cover_every_kind_and_fit_their_schema() -> None:
    examples = _examples()
    assert {d["kind"] for d in examples} == {k.kind for k in crds.KINDS}
    for doc in examples:
        kind = crds.kind_by_name(doc["kind"])
        schema = crds.crd_manifest(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.Draft4Validator(_closed(schema)).validate(doc)
        model: type[BaseModel] = kind.spec
        model.model_validate(doc["spec"])  # what the operator parses
        assert ("namespace" in doc["metadata"]) == kind.namespaced


def test_schema_refuses_a_typo_and_a_bad_value() -> None:
    kind = crds.kind_by_name("ModelService")
    schema = _closed(crds.crd_manifest(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    good = next(d for d in _examples() if d["kind"] == "ModelService")
    typo = copy.deepcopy(good)
    typo["spec"]["scaling"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(typo)
    negative = copy.deepcopy(good)
    negative["spec"]["slo"]["targetMs"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(negative)
