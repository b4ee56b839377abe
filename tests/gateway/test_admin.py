"""The admin API: tenants and keys, behind the admin token."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import MODEL, Api


def _error(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("token", [None, "wrong", "sk-lmaas-notadmin"])
def test_admin_routes_need_the_admin_token(api: Api, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, path in [
        ("GET", "/admin/tenants"),
        ("POST", "/admin/tenants"),
        ("GET", "/admin/tenants/acme/keys"),
        ("DELETE", "/admin/tenants/acme"),
    ]:
        r = api.client.request(method, path, headers=headers, json={"name": "acme"})
        assert r.status_code == 401, (method, path)
        assert _error(r)["code"] == "invalid_admin_token"
    assert api.client.get("/admin/tenants", headers=api.admin).json()["data"] == []


def test_a_tenant_key_is_not_an_admin_token(api: Api) -> None:
    tenant = api.tenant("acme")
    assert api.client.get("/admin/tenants", headers=tenant).status_code == 401


def test_tenant_lifecycle(api: Api) -> None:
    c, admin = api.client, api.admin
    r = c.post("/admin/tenants", headers=admin, json={"name": "acme", "requests_per_minute": 7})
    assert r.status_code == 201
    created = r.json()
    assert created["name"] == "acme" and created["requests_per_minute"] == 7
    assert created["tokens_per_minute"] == api.settings.default_tokens_per_minute

    assert _error(c.post("/admin/tenants", headers=admin, json={"name": "acme"}))["code"] == (
        "tenant_exists"
    )
    bad = c.post("/admin/tenants", headers=admin, json={"name": "Not A Name"})
    assert bad.status_code == 400 and "invalid" in _error(bad)["message"]
    zero = c.post("/admin/tenants", headers=admin, json={"name": "zero", "max_adapters": 0})
    assert zero.status_code == 400 and _error(zero)["param"] == "max_adapters"

    assert [t["name"] for t in c.get("/admin/tenants", headers=admin).json()["data"]] == ["acme"]
    assert c.get("/admin/tenants/acme", headers=admin).json()["id"] == created["id"]

    r = c.patch("/admin/tenants/acme", headers=admin, json={"tokens_per_minute": 99})
    assert r.status_code == 200
    assert (r.json()["tokens_per_minute"], r.json()["requests_per_minute"]) == (99, 7)
    assert c.patch("/admin/tenants/acme", headers=admin, json={"bogus": 1}).status_code == 400

    key = c.post("/admin/tenants/acme/keys", headers=admin).json()["key"]
    tenant = {"Authorization": f"Bearer {key}"}
    assert c.get("/v1/models", headers=tenant).status_code == 200

    r = c.delete("/admin/tenants/acme", headers=admin)
    assert r.json() == {"id": "acme", "object": "tenant", "deleted": True}
    assert c.get("/admin/tenants/acme", headers=admin).status_code == 404
    assert c.get("/v1/models", headers=tenant).status_code == 401, "its keys died with it"
    assert c.delete("/admin/tenants/acme", headers=admin).status_code == 404


def test_keys_are_shown_once_and_revoked_at_once(api: Api) -> None:
    c, admin = api.client, api.admin
    api.tenant("acme")
    r = c.post("/admin/tenants/acme/keys", headers=admin, json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    secret = created["key"]
    assert secret.startswith("sk-lmaas-") and created["name"] == "ci"
    assert secret.startswith(created["prefix"])

    listed = c.get("/admin/tenants/acme/keys", headers=admin).json()["data"]
    assert len(listed) == 2
    assert secret not in c.get("/admin/tenants/acme/keys", headers=admin).text
    assert all("key" not in k for k in listed)

    tenant = {"Authorization": f"Bearer {secret}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert c.post("/v1/chat/completions", headers=tenant, json=body).status_code == 200

    r = c.delete(f"/admin/tenants/acme/keys/{created['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = c.post("/v1/chat/completions", headers=tenant, json=body)
    assert r.status_code == 401
    assert _error(r)["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/v1/models", headers=tenant).status_code == 401

    assert c.delete("/admin/tenants/acme/keys/key-nope", headers=admin).status_code == 404
    api.tenant("other")
    other_key = c.get("/admin/tenants/other/keys", headers=admin).json()["data"][0]["id"]
    r = c.delete(f"/admin/tenants/acme/keys/{other_key}", headers=admin)
    assert r.status_code == 404, "a key is revoked through its own tenant only"


def test_tenant_routes_need_a_key(api: Api) -> None:
    r = api.client.get("/v1/models")
    assert r.status_code == 401 and _error(r)["code"] == "missing_api_key"
    r = api.client.get("/v1/models", headers={"Authorization": "Bearer sk-lmaas-made-up"})
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"
    r = api.client.get("/v1/models", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401
