"""Reconcile functions called directly (no kopf) against the stand-in and a real database:
the crash windows between their steps."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from lmaas.config import Settings
from lmaas.store import Database
from lmaas.store import models as m
from lmaas.store.tenants import authenticate_key
from lmaas_operator import naming as n
from lmaas_operator import platform_db
from lmaas_operator.adapter_placement import RuntimeAdapterClient
from lmaas_operator.deps import Deps
from lmaas_operator.errors import InvalidSpec, NotReady
from lmaas_operator.kube import KubeClient
from lmaas_operator.resources import ModelServiceSpec, TenantSpec
from lmaas_operator.services import reconcile_service
from lmaas_operator.settings import OperatorSettings
from lmaas_operator.tenant_manifests import api_key_secret, owner_reference
from lmaas_operator.tenants import reconcile_tenant

TENANT = {
    "apiVersion": "lmaas.io/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "acme", "uid": "11111111-2222-4333-8444-555555555555"},
}


@pytest.fixture
def deps(kube: KubeClient, database_url: str) -> Iterator[Deps]:
    db = Database(database_url)
    yield Deps(
        kube=kube,
        db=db,
        settings=Settings(),
        operator=OperatorSettings(),
        runtime=RuntimeAdapterClient(httpx.Client()),
    )
    db.dispose()


def keys(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(m.ApiKey))


def test_a_key_written_before_a_crash_is_the_one_registered(deps: Deps) -> None:
    owner = owner_reference(TENANT)
    # A previous attempt wrote the Secret and died before registering the key.
    deps.kube.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "tenant-acme", "labels": {n.LABEL_TENANT: "acme"}},
        }
    )
    earlier = platform_db.new_api_key()
    deps.kube.create(api_key_secret("acme", "tenant-acme", earlier, owner))
    status = reconcile_tenant(deps, name="acme", spec=TenantSpec(), owner=owner)
    assert status["namespace"] == "tenant-acme"
    reconcile_tenant(deps, name="acme", spec=TenantSpec(), owner=owner)
    assert keys(deps.db) == 1
    with deps.db.session() as s:
        assert authenticate_key(s, earlier).name == "acme"
    secret = deps.kube.get("v1", "Secret", n.API_KEY_SECRET, "tenant-acme")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == earlier


def test_a_namespace_of_someone_else_is_not_taken(deps: Deps) -> None:
    deps.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-acme"}})
    with pytest.raises(InvalidSpec, match=r"spec\.namespace"):
        reconcile_tenant(deps, name="acme", spec=TenantSpec(), owner=owner_reference(TENANT))
    assert keys(deps.db) == 0


def test_a_service_waits_for_its_model(deps: Deps) -> None:
    spec = ModelServiceSpec.model_validate({"model": "missing", "slo": {"targetMs": 40}})
    owner = {**owner_reference({**TENANT, "kind": "ModelService"}), "kind": "ModelService"}
    with pytest.raises(NotReady, match="Model 'missing' does not exist"):
        reconcile_service(deps, name="chat", namespace="shared", spec=spec, owner=owner, status={})
