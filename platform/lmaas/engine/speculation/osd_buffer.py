"""The runtime side of online distillation (OSD): record where the draft was wrong, for the worker.

Per request the engine reports each verification (`observe`): the position in the token
sequence where the proposals started, how many were proposed and how many accepted.
Positions of accepted proposals are `right`; the position of the first rejected one —
where the target emitted another token — is `wrong`. When the request ends (`finish`),
its tokens and positions become one `OSDRecord` in the buffer of its (tenant, model).

A buffer holds at most `flush_tokens` tokens before it is written out as one JSON-lines
file, `<root>/<tenant>/<model>/<utc time>-<random>.jsonl`, where `root` is any fsspec URL
(default `$LMAAS_ARTIFACT_URL/osd`, under `LMAAS_HOME` in the embedded setup). Writes are
atomic (a temporary name, then a rename), a (tenant, model) keeps at most `max_files`
files (the oldest go first), and memory stays bounded by `max_pending_tokens` over all
buffers (the largest is flushed). Tenants' tokens never share a file or folder. The
worker reads them back with `load_osd_records` and removes what it used with
`remove_osd_files`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256

import fsspec

__all__ = [
    "OSDRecord",
    "OSDRecorder",
    "list_osd_files",
    "load_osd_records",
    "osd_folder",
    "remove_osd_files",
]

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class OSDRecord:
    """One finished request: `token_ids[p]` was predicted by the draft wrongly (p in `wrong`)
    or rightly (p in `right`) from `token_ids[:p]`."""

    token_ids: list[int]
    prompt_len: int
    wrong: list[int]
    right: list[int]
    adapter_id: str | None = None

    @classmethod
    def from_json(cls, line: str) -> OSDRecord:
        data = json.loads(line)
        record = cls(**{k: data[k] for k in ("token_ids", "prompt_len", "wrong", "right")})
        record.adapter_id = data.get("adapter_id")
        n = len(record.token_ids)
        if any(not 0 < p < n for p in (*record.wrong, *record.right)):
            raise ValueError("OSD record has a position outside its tokens")
        return record


def _safe_name(value: str) -> str:
    """A path component for a tenant or model name: itself if plain, else a digest."""
    if _SAFE.fullmatch(value) and value not in (".", ".."):
        return value
    return "h-" + sha256(value.encode()).hexdigest()[:24]


def osd_folder(root: str, tenant_id: str, model: str) -> str:
    """Where the files of (tenant, model) live under `root`."""
    return f"{root.rstrip('/')}/{_safe_name(tenant_id or '_')}/{_safe_name(model)}"


@dataclass
class _Live:
    tenant_id: str
    wrong: list[int] = field(default_factory=list)
    right: list[int] = field(default_factory=list)


class OSDRecorder:
    """Collects OSD records per (tenant, model) and writes them out (module docstring)."""

    def __init__(
        self,
        root: str,
        model: str,
        *,
        flush_tokens: int = 65_536,
        max_pending_tokens: int = 1_048_576,
        max_files: int = 64,
        storage_options: dict | None = None,
    ) -> None:
        self.root = root.rstrip("/")
        self.model = model
        self.flush_tokens = flush_tokens
        self.max_pending_tokens = max_pending_tokens
        self.max_files = max_files
        self._fs, _ = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        self._live: dict[Hashable, _Live] = {}
        self._buffers: dict[str, list[OSDRecord]] = {}
        self._buffer_tokens: dict[str, int] = {}
        self._lock = threading.Lock()
        self.num_files_written = 0

    def observe(
        self, request_id: Hashable, tenant_id: str, start: int, num_proposed: int, num_accepted: int
    ) -> None:
        """A verification of `request_id`: proposals for positions start, start+1, …"""
        if num_proposed <= 0:
            return
        live = self._live.get(request_id)
        if live is None:
            live = self._live[request_id] = _Live(tenant_id)
        live.right.extend(range(start, start + num_accepted))
        if num_accepted < num_proposed:
            live.wrong.append(start + num_accepted)

    def discard(self, request_id: Hashable) -> None:
        """Forget a request without recording it."""
        self._live.pop(request_id, None)

    def finish(
        self,
        request_id: Hashable,
        token_ids: Sequence[int],
        prompt_len: int,
        adapter_id: str | None = None,
    ) -> None:
        """The request ended with `token_ids` (prompt + output): buffer its record."""
        live = self._live.pop(request_id, None)
        if live is None or not (live.wrong or live.right):
            return
        n = len(token_ids)
        record = OSDRecord(
            token_ids=[int(t) for t in token_ids],
            prompt_len=prompt_len,
            wrong=[p for p in live.wrong if 0 < p < n],
            right=[p for p in live.right if 0 < p < n],
            adapter_id=adapter_id,
        )
        to_write: list[tuple[str, list[OSDRecord]]] = []
        with self._lock:
            key = live.tenant_id
            self._buffers.setdefault(key, []).append(record)
            self._buffer_tokens[key] = self._buffer_tokens.get(key, 0) + n
            if self._buffer_tokens[key] >= self.flush_tokens:
                to_write.append((key, self._take(key)))
            while sum(self._buffer_tokens.values()) > self.max_pending_tokens:
                largest = max(self._buffer_tokens, key=self._buffer_tokens.__getitem__)
                to_write.append((largest, self._take(largest)))
        for tenant_id, records in to_write:
            self._write(tenant_id, records)

    def flush(self) -> list[str]:
        """Write every non-empty buffer now (shutdown, a timer); returns the files written."""
        with self._lock:
            batches = [(key, self._take(key)) for key in list(self._buffers)]
        return [self._write(key, records) for key, records in batches if records]

    def pending_tokens(self) -> int:
        with self._lock:
            return sum(self._buffer_tokens.values())

    def _take(self, key: str) -> list[OSDRecord]:
        self._buffer_tokens.pop(key, None)
        return self._buffers.pop(key, [])

    def _write(self, tenant_id: str, records: list[OSDRecord]) -> str:
        folder = osd_folder(self.root, tenant_id, self.model)
        self._fs.makedirs(folder, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{secrets.token_hex(4)}.jsonl"
        tmp = f"{folder}/.tmp-{name}"
        with self._fs.open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(asdict(r), separators=(",", ":")) + "\n")
        self._fs.mv(tmp, f"{folder}/{name}")
        self.num_files_written += 1
        files = list_osd_files(self.root, tenant_id, self.model, fs=self._fs)
        for old in files[: max(0, len(files) - self.max_files)]:
            self._fs.rm(old)
        return f"{folder}/{name}"


def list_osd_files(root: str, tenant_id: str, model: str, *, fs=None) -> list[str]:
    """The finished record files of (tenant, model), oldest first."""
    if fs is None:
        fs, _ = fsspec.core.url_to_fs(root)
    folder = osd_folder(root, tenant_id, model)
    if not fs.exists(folder):
        return []
    names = [
        p
        for p in fs.ls(folder, detail=False)
        if p.endswith(".jsonl") and not p.rsplit("/", 1)[-1].startswith(".tmp-")
    ]
    names.sort(key=lambda p: p.rsplit("/", 1)[-1])
    return [fs.unstrip_protocol(p) for p in names]


def load_osd_records(paths: Sequence[str], *, max_tokens: int | None = None) -> list[OSDRecord]:
    """The records in `paths` (newest files first when `max_tokens` cuts the total)."""
    records: list[OSDRecord] = []
    total = 0
    for path in reversed(list(paths)):
        with fsspec.open(path, "r") as f:
            for line in f:
                if line.strip():
                    record = OSDRecord.from_json(line)
                    records.append(record)
                    total += len(record.token_ids)
        if max_tokens is not None and total >= max_tokens:
            break
    return records


def remove_osd_files(paths: Sequence[str]) -> None:
    """Delete files the worker has distilled from."""
    for path in paths:
        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p)
