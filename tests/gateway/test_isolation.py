"""Tenant isolation: with another tenant's key, its objects answer 404 exactly as missing
ones, and nothing of it is ever listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.conftest import MODEL, Api
from tests.helpers.adapters import make_peft_adapter, pack_tar


@pytest.fixture(scope="module")
def peft_tar(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = make_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("iso") / "adapter")
    return pack_tar(folder, folder.parent / "a.tar.gz").read_bytes()


def _without_name(body: dict, name: str) -> dict:
    """The error body with the looked-up name blanked, to compare two 404s."""
    error = dict(body["error"])
    error["message"] = error["message"].replace(name, "<name>")
    return error


def test_another_tenants_objects_are_invisible(api: Api, peft_tar: bytes) -> None:
    c = api.client
    alice, bob = api.tenant("alice"), api.tenant("bob")
    files = {"file": ("a.tar.gz", peft_tar, "application/gzip")}
    assert (
        c.post("/v1/adapters", headers=alice, files=files, data={"name": "secret"}).status_code
        == 201
    )
    body = {"model": "secret", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert c.post("/v1/chat/completions", headers=alice, json=body).status_code == 200

    # Lookups of alice's adapter by bob answer exactly like a name that exists nowhere.
    for method, path, kwargs in [
        ("GET", "/v1/adapters/{}", {}),
        ("DELETE", "/v1/adapters/{}", {}),
        ("GET", "/v1/models/{}", {}),
        ("POST", "/v1/chat/completions", {"json": {**body, "model": "{}"}}),
        ("POST", "/v1/completions", {"json": {"model": "{}", "prompt": "hi", "max_tokens": 2}}),
    ]:

        def call(name: str, method=method, path=path, kwargs=kwargs):  # type: ignore[no-untyped-def]
            fmt = {k: ({**v, "model": name} if k == "json" else v) for k, v in kwargs.items()}
            return c.request(method, path.format(name), headers=bob, **fmt)

        theirs, missing = call("secret"), call("no-such-adapter")
        assert theirs.status_code == missing.status_code == 404, (method, path)
        assert _without_name(theirs.json(), "secret") == _without_name(
            missing.json(), "no-such-adapter"
        ), (method, path)

    # Nothing of alice is listed to bob.
    assert c.get("/v1/adapters", headers=bob).json()["data"] == []
    assert [m["id"] for m in c.get("/v1/models", headers=bob).json()["data"]] == [MODEL]
    assert c.get("/v1/usage", headers=bob).json()["data"] == []
    assert "secret" not in c.get("/v1/models", headers=bob).text

    # Bob's attempts changed nothing of alice's, and names are per tenant.
    assert [a["name"] for a in c.get("/v1/adapters", headers=alice).json()["data"]] == ["secret"]
    r = c.post("/v1/adapters", headers=bob, files=files, data={"name": "secret"})
    assert r.status_code == 201
    assert r.json()["id"] != c.get("/v1/adapters/secret", headers=alice).json()["id"]
    assert c.delete("/v1/adapters/secret", headers=bob).status_code == 200
    assert c.get("/v1/adapters/secret", headers=alice).status_code == 200
    alice_usage = c.get("/v1/usage", headers=alice).json()["data"]
    assert [row["model"] for row in alice_usage] == ["secret"]
