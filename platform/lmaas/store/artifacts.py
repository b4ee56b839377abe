"""The artifact store: adapters, data files and checkpoints as folders under one fsspec URL.

Keys are ``/``-separated relative paths (``tenants/<tenant_id>/adapters/<adapter_id>``);
every stored object gets a full URI (``file:///…``, ``s3://…``) that any process can read
back with `fetch_file`/`fetch_folder` without knowing the store's root. Local folders are
written atomically (a temporary folder renamed into place), so a crash never leaves a
half-written artifact under its final key.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from fsspec.core import url_to_fs

__all__ = ["ArtifactStore", "fetch_file", "fetch_folder", "local_model_folder", "read_chunks"]


def _check_key(key: str) -> str:
    parts = key.strip("/").split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid artifact key {key!r}")
    return "/".join(parts)


class ArtifactStore:
    """Folders of files under the root URL `url` (a local path or any fsspec URL)."""

    def __init__(self, url: str) -> None:
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/")
        if self._is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @property
    def _is_local(self) -> bool:
        protocols = self.fs.protocol
        return "file" in (protocols if isinstance(protocols, tuple) else (protocols,))

    def path(self, key: str) -> str:
        return posixpath.join(self.root, _check_key(key))

    def uri(self, key: str) -> str:
        """The full URI of `key`, readable by `fetch_file`/`fetch_folder` anywhere."""
        return self.fs.unstrip_protocol(self.path(key))

    def key_of(self, uri: str) -> str | None:
        """The key of a URI this store gave out (`uri`), or None if it is not under its root."""
        root = self.fs.unstrip_protocol(self.root).rstrip("/") + "/"
        if not uri.startswith(root):
            return None
        try:
            return _check_key(uri[len(root) :].rstrip("/"))
        except ValueError:
            return None

    def put_folder(self, local: Path, key: str) -> str:
        """Copy the files of the local folder `local` (not recursive) to `key`; returns its URI."""
        target = self.path(key)
        files = sorted(p for p in local.iterdir() if p.is_file())
        if self._is_local:
            final = Path(target)
            tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                for f in files:
                    shutil.copyfile(f, tmp / f.name)
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        else:
            for f in files:
                self.fs.put_file(str(f), posixpath.join(target, f.name))
        return self.uri(key)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def delete(self, key: str) -> None:
        """Remove `key` and everything under it (no error if absent)."""
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def fetch_file(uri: str, local: Path) -> Path:
    """Copy the file at `uri` to the local path `local`."""
    fs, path = url_to_fs(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(local))
    return local


def fetch_folder(uri: str, names: list[str], local: Path) -> Path:
    """Copy the files `names` of the stored folder `uri` into the local folder `local`."""
    local.mkdir(parents=True, exist_ok=True)
    for name in names:
        fetch_file(uri.rstrip("/") + "/" + name, local / name)
    return local


def local_model_folder(uri: str, cache_dir: Path) -> Path:
    """A local folder holding the model folder stored at `uri`: itself when it is local, else
    a copy under `cache_dir` made once (atomically) and reused, keyed by the URI."""
    fs, path = url_to_fs(uri)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols:
        return Path(path)
    target = cache_dir / "stored" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for remote in fs.ls(path, detail=False):
            fs.get_file(remote, str(tmp / remote.rstrip("/").rsplit("/", 1)[-1]))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_chunks(uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of the file at `uri`, in chunks (for streaming it to a client)."""
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk
