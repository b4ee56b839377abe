"""Schemas of the files API: OpenAI's ``FileObject``, its list page and ``FileDeleted``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["FileDeleted", "FileList", "FilePublic"]


class FilePublic(BaseModel):
    """OpenAI's FileObject (`created_at` in Unix seconds); `num_lines` is lmaas's: examples."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    num_lines: int


class FileList(BaseModel):
    """A cursor page of files (OpenAI: pass the last `id` as `after` for the next page)."""

    object: Literal["list"] = "list"
    data: list[FilePublic]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
