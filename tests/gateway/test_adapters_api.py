"""Adapter uploads: a peft adapter is validated, stored and served at once; bad ones leave
nothing behind."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.gateway.conftest import MODEL, Api, gateway_settings
from tests.helpers.adapters import make_peft_adapter, pack_tar, pack_zip, write_adapter_files

PROMPT = [{"role": "user", "content": "Tell me a joke about cats."}]


@pytest.fixture(scope="module")
def peft_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("peft") / "adapter")


@pytest.fixture(scope="module")
def peft_tar(peft_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return pack_tar(peft_dir, tmp_path_factory.mktemp("tar") / "a.tar.gz", prefix="my").read_bytes()


def upload(api: Api, headers: dict, data: bytes, name: str = "cats", **fields: str):  # type: ignore[no-untyped-def]
    return api.client.post(
        "/v1/adapters",
        headers=headers,
        files={"file": ("adapter.tar.gz", data, "application/gzip")},
        data={"name": name, **fields},
    )


def chat(api: Api, headers: dict, model: str):  # type: ignore[no-untyped-def]
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    return api.client.post("/v1/chat/completions", headers=headers, json=body)


def stored_files(api: Api) -> list[Path]:
    roots = [Path(api.settings.resolved_artifact_url), api.settings.home / "tmp"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_upload_serve_delete(api: Api, peft_tar: bytes, peft_dir: Path) -> None:
    headers = api.tenant("acme")
    base = chat(api, headers, MODEL).json()["choices"][0]["message"]["content"]

    r = upload(api, headers, peft_tar)
    assert r.status_code == 201, r.text
    adapter = r.json()
    assert (adapter["name"], adapter["base_model"], adapter["rank"]) == ("cats", MODEL, 4)
    assert adapter["target_modules"] == ["q_proj", "v_proj"] and adapter["status"] == "ready"

    models = api.client.get("/v1/models", headers=headers).json()["data"]
    assert {"id": "cats", "parent": MODEL} in [
        {"id": m["id"], "parent": m["parent"]} for m in models
    ]
    assert api.client.get("/v1/models/cats", headers=headers).json()["parent"] == MODEL
    assert api.client.get("/v1/adapters/cats", headers=headers).json()["id"] == adapter["id"]

    r = chat(api, headers, "cats")
    assert r.status_code == 200, r.text
    tuned = r.json()
    assert tuned["model"] == "cats"
    assert tuned["choices"][0]["message"]["content"] != base, "the adapter changes the output"
    usage = {
        row["model"]: row for row in api.client.get("/v1/usage", headers=headers).json()["data"]
    }
    assert usage["cats"]["completion_tokens"] == tuned["usage"]["completion_tokens"]

    again = upload(api, headers, peft_tar)
    assert again.status_code == 409 and again.json()["error"]["code"] == "adapter_exists"

    r = api.client.delete("/v1/adapters/cats", headers=headers)
    assert r.json() == {"id": "cats", "object": "adapter", "deleted": True}
    assert chat(api, headers, "cats").status_code == 404
    assert api.client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert stored_files(api) == []

    zipped = pack_zip(peft_dir, api.settings.home / "a.zip").read_bytes()
    assert upload(api, headers, zipped, name="cats-zip").status_code == 201
    assert (
        chat(api, headers, "cats-zip").json()["choices"][0]["message"]["content"]
        == (tuned["choices"][0]["message"]["content"])
    )


def _evil_tar(tmp: Path, peft_dir: Path, member: tarfile.TarInfo) -> bytes:
    path = tmp / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(peft_dir.iterdir()):
            tar.add(f, arcname=f.name)
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path.read_bytes()


def _bad_uploads(tmp: Path, peft_dir: Path) -> dict[str, tuple[bytes, int, str]]:
    traversal = tarfile.TarInfo("../../../../tmp/owned.txt")
    traversal.size = 1
    symlink = tarfile.TarInfo("adapter_link")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    wrong_rank = write_adapter_files(
        tmp / "rank",
        {f"{prefix}.lora_A.weight": ([8, 64], None), f"{prefix}.lora_B.weight": ([64, 8], None)},
        rank=4,
    )
    wrong_shape = write_adapter_files(
        tmp / "shape",
        {f"{prefix}.lora_A.weight": ([4, 48], None), f"{prefix}.lora_B.weight": ([48, 4], None)},
        rank=4,
    )
    too_big_rank = write_adapter_files(
        tmp / "big",
        {
            f"{prefix}.lora_A.weight": ([128, 64], None),
            f"{prefix}.lora_B.weight": ([64, 128], None),
        },
        rank=128,
    )
    return {
        "traversal": (_evil_tar(tmp, peft_dir, traversal), 400, "unsafe_archive_entry"),
        "symlink": (_evil_tar(tmp, peft_dir, symlink), 400, "unsafe_archive_entry"),
        "wrong rank": (pack_tar(wrong_rank, tmp / "r.tgz").read_bytes(), 400, "shape_mismatch"),
        "wrong shape": (pack_tar(wrong_shape, tmp / "s.tgz").read_bytes(), 400, "shape_mismatch"),
        "rank limit": (pack_tar(too_big_rank, tmp / "b.tgz").read_bytes(), 400, "rank_too_large"),
        "not an archive": (b"hello world", 400, "invalid_archive"),
    }


def test_bad_uploads_are_refused_and_nothing_is_stored(
    api: Api, peft_dir: Path, tmp_path: Path
) -> None:
    headers = api.tenant("acme")
    for case, (data, status, code) in _bad_uploads(tmp_path, peft_dir).items():
        r = upload(api, headers, data, name=case.replace(" ", "-"))
        assert r.status_code == status, (case, r.text)
        error = r.json()["error"]
        assert error["code"] == code, (case, error)
        assert error["message"], case
    assert api.client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert stored_files(api) == []
    assert not Path("/tmp/owned.txt").exists()


def test_upload_form_and_quota_errors(api: Api, peft_tar: bytes) -> None:
    headers = api.tenant("acme", max_adapters=1)
    c = api.client
    r = c.post("/v1/adapters", headers=headers, data={"name": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_upload"
    r = c.post("/v1/adapters", headers=headers, files={"file": ("a.tgz", peft_tar)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    assert upload(api, headers, peft_tar, name="bad/name").status_code == 400
    assert upload(api, headers, peft_tar, name=MODEL).status_code == 409
    r = upload(api, headers, peft_tar, name="other-base", model="gpt-9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert upload(api, headers, peft_tar, name="one").status_code == 201
    r = upload(api, headers, peft_tar, name="two")
    assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_quota_exceeded"
    assert [a["name"] for a in c.get("/v1/adapters", headers=headers).json()["data"]] == ["one"]


def test_oversize_uploads_are_refused(
    tmp_path: Path, database_url: str, runtime_url: str, peft_tar: bytes
) -> None:
    from lmaas.gateway import create_app

    settings = gateway_settings(tmp_path, database_url, runtime_url, max_adapter_bytes=4096)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        headers = api.tenant("acme")
        assert len(peft_tar) > 4096
        r = upload(api, headers, peft_tar)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "file_too_large"
        assert "LMAAS_MAX_ADAPTER_BYTES" in r.json()["error"]["message"]
        assert client.get("/v1/adapters", headers=headers).json()["data"] == []
        assert stored_files(api) == []
