"""``/v1/files`` (OpenAI-compatible): upload, list, get, download and delete data files.

The only purpose is ``fine-tune``: a chat JSONL file, checked line by line with
`lmaas.finetune.data` before anything is stored (the error names the bad line). A file is
stored in the artifact store (`lmaas.finetune.naming.data_file_key`) and recorded as a
`FileObject` whose `uri` is the stored file's full URI, which the worker reads.
"""

from __future__ import annotations

import logging
import shutil
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lmaas.finetune.data import DataFileError, validate_chat_jsonl
from lmaas.finetune.naming import DATA_FILE_NAME, data_file_key
from lmaas.gateway.deps import StateDep, TenantRepo
from lmaas.gateway.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from lmaas.gateway.schemas.files import FileDeleted, FileList, FilePublic
from lmaas.gateway.state import GatewayState
from lmaas.gateway.uploads import DATA_FILE_UPLOAD, ReceivedUpload, receive_upload
from lmaas.store.artifacts import read_chunks
from lmaas.store.models import FileObject, FineTuneJob, new_id
from lmaas.store.repository import TenantRepository

__all__ = ["ACTIVE_JOB_STATUSES", "get_file_or_404", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)
ACTIVE_JOB_STATUSES = ("validating_files", "queued", "running")


def file_public(row: FileObject) -> FilePublic:
    return FilePublic(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
        num_lines=row.num_lines,
    )


def get_file_or_404(repo: TenantRepository, file_id: str, param: str = "file_id") -> FileObject:
    """The tenant's file `file_id`; another tenant's answers exactly like a missing one."""
    row = repo.get_owned(FileObject, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}", code="file_not_found", param=param)
    return row


def _check(upload: ReceivedUpload, max_bytes: int) -> int:
    """Validate the uploaded data file (blocking); the number of examples."""
    purpose = upload.fields.get("purpose", "").strip()
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported: upload data files with "
            "purpose=fine-tune (chat JSONL)",
            code="invalid_purpose",
            param="purpose",
        )
    try:
        examples = validate_chat_jsonl(upload.archive, max_bytes=max_bytes)
    except DataFileError as exc:
        if exc.line == 0 and "too large" in str(exc):
            raise PayloadTooLarge(str(exc), code="file_too_large", param="file") from exc
        raise InvalidRequest(
            f"{exc}. Each line must be a JSON object like "
            '{"messages": [{"role": "user", "content": "…"}, '
            '{"role": "assistant", "content": "…"}]}',
            code="invalid_file_format",
            param="file",
        ) from exc
    return len(examples)


def _store(
    state: GatewayState, repo: TenantRepository, upload: ReceivedUpload, examples: int
) -> FileObject:
    file_id = new_id("file")
    key = data_file_key(repo.tenant.id, file_id)
    folder = upload.folder / "stored"
    folder.mkdir()
    shutil.move(upload.archive, folder / DATA_FILE_NAME)
    state.artifacts.put_folder(folder, key)
    try:
        row = repo.add(
            FileObject(
                id=file_id,
                filename=(upload.filename or DATA_FILE_NAME)[:255],
                purpose="fine-tune",
                bytes=(folder / DATA_FILE_NAME).stat().st_size,
                uri=state.artifacts.uri(f"{key}/{DATA_FILE_NAME}"),
                num_lines=examples,
            )
        )
        repo.commit()
        return row
    except BaseException:
        repo.session.rollback()
        state.artifacts.delete(key)
        raise


@router.post("")
async def upload_file(request: Request, repo: TenantRepo, state: StateDep) -> FilePublic:
    """Upload a chat JSONL file for fine-tuning (multipart: `file`, `purpose=fine-tune`)."""
    settings = state.settings
    upload = await receive_upload(
        request,
        limit=settings.max_file_bytes,
        tmp_root=settings.home / "tmp",
        kind=DATA_FILE_UPLOAD,
    )
    try:
        examples = await run_in_threadpool(_check, upload, settings.max_file_bytes)
        row = await run_in_threadpool(_store, state, repo, upload, examples)
    finally:
        await run_in_threadpool(upload.cleanup)
    log.info("tenant %s uploaded file %s (%d examples)", repo.tenant.name, row.id, examples)
    return file_public(row)


@router.get("")
def list_files(
    repo: TenantRepo,
    purpose: str | None = None,
    limit: int = Query(default=10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    """Your files, newest first (``order=asc``: oldest first); a cursor page."""
    where = () if purpose is None else (FileObject.purpose == purpose,)
    try:
        rows, has_more = repo.page_owned(
            FileObject, after=after, limit=limit, newest_first=order == "desc", where=where
        )
    except LookupError:
        raise InvalidRequest(
            f"after: no file {after!r} to continue from", code="invalid_cursor", param="after"
        ) from None
    data = [file_public(r) for r in rows]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/{file_id}")
def get_file(file_id: str, repo: TenantRepo) -> FilePublic:
    return file_public(get_file_or_404(repo, file_id))


def _header_safe(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


@router.get("/{file_id}/content")
def get_file_content(file_id: str, repo: TenantRepo) -> StreamingResponse:
    """The file's bytes, as uploaded."""
    row = get_file_or_404(repo, file_id)
    return StreamingResponse(
        read_chunks(row.uri),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{_header_safe(row.filename)}"'},
    )


@router.delete("/{file_id}")
def delete_file(file_id: str, repo: TenantRepo, state: StateDep) -> FileDeleted:
    """Delete a file and its stored bytes; refused while a queued or running job uses it."""
    row = get_file_or_404(repo, file_id)
    user = repo.session.execute(
        repo.scoped(FineTuneJob)
        .where(
            FineTuneJob.status.in_(ACTIVE_JOB_STATUSES),
            (FineTuneJob.training_file_id == file_id) | (FineTuneJob.validation_file_id == file_id),
        )
        .limit(1)
    ).scalar_one_or_none()
    if user is not None:
        raise Conflict(
            f"file {file_id} is used by fine-tuning job {user.id} ({user.status}): cancel the "
            "job or wait for it to finish, then delete the file",
            code="file_in_use",
            param="file_id",
        )
    repo.session.delete(row)
    repo.commit()
    state.artifacts.delete(data_file_key(repo.tenant.id, file_id))
    return FileDeleted(id=file_id)
