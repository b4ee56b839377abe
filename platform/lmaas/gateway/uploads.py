"""Receiving an upload (an adapter, a data file): the multipart body, streamed with a size
limit, then (adapters) checked.

The body is counted while it arrives and refused (413) as soon as it exceeds the limit; a
``Content-Length`` over the limit is refused before reading anything. The archive is then
unpacked and validated by `lmaas.adapters` in a private temporary folder that is always
removed: nothing reaches the artifact store or the database unless every check passed.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from lmaas.adapters import (
    ADAPTER_WEIGHTS,
    AdapterError,
    AdapterSpec,
    extract_adapter_archive,
    parse_adapter,
    validate_adapter,
)
from lmaas.gateway.errors import InvalidRequest, PayloadTooLarge
from lmaas.protocol import RuntimeInfo

__all__ = [
    "ADAPTER_UPLOAD",
    "DATA_FILE_UPLOAD",
    "ReceivedUpload",
    "UploadKind",
    "ValidatedAdapter",
    "receive_upload",
    "validate_upload",
]

_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the small text fields


@dataclass(frozen=True)
class UploadKind:
    """What is uploaded, for the error messages: its name, its size setting, an example."""

    what: str
    limit_setting: str
    example: str


ADAPTER_UPLOAD = UploadKind(
    "the adapter archive",
    "LMAAS_MAX_ADAPTER_BYTES",
    "a `file` part (the .tar.gz or .zip) and a `name` field, e.g. curl -F "
    "file=@adapter.tar.gz -F name=my-adapter",
)
DATA_FILE_UPLOAD = UploadKind(
    "the file",
    "LMAAS_MAX_FILE_BYTES",
    "a `file` part (the .jsonl) and a `purpose` field, e.g. curl -F file=@train.jsonl "
    "-F purpose=fine-tune",
)


def _too_large(limit: int, kind: UploadKind) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{kind.what} is larger than {limit} bytes, the limit of this deployment "
        f"({kind.limit_setting}): split it or make it smaller",
        code="file_too_large",
        param="file",
    )


@dataclass
class ReceivedUpload:
    """The form of an upload: text fields and the archive, spooled to `archive`."""

    fields: dict[str, str]
    archive: Path  # the `file` part (an adapter archive or a data file)
    folder: Path  # private temporary folder holding everything; remove with `cleanup`
    filename: str = ""  # the name the client gave the `file` part

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


async def _limited(
    stream: AsyncIterator[bytes], limit: int, kind: UploadKind
) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit + _FORM_OVERHEAD:
            raise _too_large(limit, kind)
        yield chunk


async def receive_upload(
    request: Request, *, limit: int, tmp_root: Path, kind: UploadKind = ADAPTER_UPLOAD
) -> ReceivedUpload:
    """Read a ``multipart/form-data`` body with a ``file`` part of at most `limit` bytes."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest(
            f"upload {kind.what} as multipart/form-data with {kind.example}",
            code="invalid_upload",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + _FORM_OVERHEAD:
        raise _too_large(limit, kind)
    parser = MultiPartParser(
        request.headers, _limited(request.stream(), limit, kind), max_files=1, max_fields=16
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(
            f"malformed multipart body: {exc.message}", code="invalid_upload"
        ) from exc
    tmp_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(
                f"the upload has no `file` part: send {kind.what} as the form field `file`",
                code="invalid_upload",
                param="file",
            )
        archive = folder / "archive"
        with open(archive, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        await form.close()
        if archive.stat().st_size > limit:
            raise _too_large(limit, kind)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return ReceivedUpload(
            fields=fields, archive=archive, folder=folder, filename=upload.filename or ""
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ValidatedAdapter:
    """An adapter that passed every check, unpacked in `folder`."""

    folder: Path
    spec: AdapterSpec
    size_bytes: int
    sha256: str


def validate_upload(
    upload: ReceivedUpload, info: RuntimeInfo, *, max_bytes: int, max_rank: int
) -> ValidatedAdapter:
    """Unpack and validate the archive against the base model (blocking: run in a thread)."""
    folder = upload.folder / "adapter"
    try:
        extract_adapter_archive(upload.archive, folder, max_total_bytes=max_bytes)
        spec = parse_adapter(folder)
        validate_adapter(spec, info, max_rank=max_rank)
    except AdapterError as exc:
        raise InvalidRequest(exc.message, code=exc.code, param=exc.param or "file") from exc
    digest = hashlib.sha256()
    with open(folder / ADAPTER_WEIGHTS, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return ValidatedAdapter(folder=folder, spec=spec, size_bytes=size, sha256=digest.hexdigest())
