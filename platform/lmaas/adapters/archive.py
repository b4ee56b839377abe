"""Safe extraction of an uploaded adapter archive (``.tar.gz``, ``.tar`` or ``.zip``).

The archive is untrusted. Only regular files named ``adapter_config.json`` and
``adapter_model.safetensors`` are extracted, at the top level or inside one folder
(``my-adapter/adapter_config.json``, as ``tar czf a.tgz my-adapter`` makes); peft's
``README.md`` is skipped. Refused: absolute paths, ``..``, symbolic and hard links, devices
and FIFOs, any other file, duplicates, encrypted zip members, and more unpacked bytes than
the limit (counted while unpacking, not trusted from headers, so a zip bomb stops early).
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from lmaas.adapters.errors import AdapterError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterArchiveError",
    "extract_adapter_archive",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_WANTED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_SKIPPED = frozenset({"README.md"})
_MAX_ENTRIES = 64
_CHUNK = 1 << 20


class AdapterArchiveError(AdapterError):
    """The archive is malformed, unsafe or too large."""


def extract_adapter_archive(archive: Path, dest: Path, *, max_total_bytes: int) -> Path:
    """Unpack the adapter files of `archive` into the (empty or new) folder `dest`.

    The format is recognised from the content, not the file name. Returns `dest`, which
    then holds exactly `adapter_config.json` and `adapter_model.safetensors`. Raises
    `AdapterArchiveError` on anything unsafe or unexpected; `dest` may then hold partial
    files and should be discarded by the caller.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b" or _is_plain_tar(archive):
        _extract_tar(archive, dest, max_total_bytes)
    elif magic in (b"PK\x03\x04", b"PK\x05\x06"):
        _extract_zip(archive, dest, max_total_bytes)
    else:
        raise AdapterArchiveError(
            "the upload is not a .tar.gz or .zip archive: pack the folder written by peft's "
            "save_pretrained, e.g. `tar czf adapter.tar.gz -C my-adapter .`",
            code="invalid_archive",
        )
    missing = [name for name in _WANTED if not (dest / name).is_file()]
    if missing:
        raise AdapterArchiveError(
            f"the archive lacks {' and '.join(missing)}: an adapter archive holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (peft's save_pretrained writes both)",
            code="missing_adapter_file",
        )
    return dest


def _is_plain_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


class _Budget:
    """Counts unpacked bytes against the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, num_bytes: int) -> None:
        self.used += num_bytes
        if self.used > self.limit:
            raise AdapterArchiveError(
                f"the archive unpacks to more than {self.limit} bytes (the limit, "
                "LMAAS_MAX_ADAPTER_BYTES): an adapter of this size is not accepted",
                code="archive_too_large",
            )


def _target_name(name: str, top_folders: set[str], *, is_dir: bool) -> str | None:
    """The file to write for archive entry `name`, or None to skip it; raises if unsafe."""
    if not name or name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise AdapterArchiveError(
            f"unsafe archive entry {name!r}: absolute paths are not allowed",
            code="unsafe_archive_entry",
        )
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise AdapterArchiveError(
            f"unsafe archive entry {name!r}: '..' in a path is not allowed",
            code="unsafe_archive_entry",
        )
    if not parts:
        return None
    if is_dir:
        if len(parts) > 1:
            raise _unexpected(name)
        top_folders.add(parts[0])
        return None
    if len(parts) > 2:
        raise _unexpected(name)
    if len(parts) == 2:
        top_folders.add(parts[0])
    if len(top_folders) > 1:
        raise AdapterArchiveError(
            "the archive holds several folders: pack one adapter per archive",
            code="unexpected_archive_entry",
        )
    base = parts[-1]
    if base in _SKIPPED:
        return None
    if base not in _WANTED:
        raise _unexpected(name)
    return base


def _unexpected(name: str) -> AdapterArchiveError:
    return AdapterArchiveError(
        f"unexpected archive entry {name!r}: an adapter archive holds only {ADAPTER_CONFIG} "
        f"and {ADAPTER_WEIGHTS} (optionally inside one folder); .bin weights must be "
        "converted to safetensors (save_pretrained(..., safe_serialization=True))",
        code="unexpected_archive_entry",
    )


def _copy(src: IO[bytes], target: Path, budget: _Budget) -> None:
    if target.exists():
        raise AdapterArchiveError(
            f"the archive holds {target.name} twice", code="unexpected_archive_entry"
        )
    with open(target, "xb") as out:
        while chunk := src.read(_CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)


def _count_entry(count: int) -> int:
    if count >= _MAX_ENTRIES:
        raise AdapterArchiveError(
            f"the archive has more than {_MAX_ENTRIES} entries: pack only the adapter files",
            code="unexpected_archive_entry",
        )
    return count + 1


def _extract_tar(archive: Path, dest: Path, limit: int) -> None:
    budget = _Budget(limit)
    top: set[str] = set()
    count = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                count = _count_entry(count)
                if member.issym() or member.islnk():
                    raise AdapterArchiveError(
                        f"unsafe archive entry {member.name!r}: links are not allowed",
                        code="unsafe_archive_entry",
                    )
                if not (member.isfile() or member.isdir()):
                    raise AdapterArchiveError(
                        f"unsafe archive entry {member.name!r}: only regular files are allowed "
                        "(no devices, FIFOs or special files)",
                        code="unsafe_archive_entry",
                    )
                name = _target_name(member.name, top, is_dir=member.isdir())
                if name is None:
                    continue
                if member.size > limit:
                    budget.spend(member.size)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - regular files always have data
                    raise _unexpected(member.name)
                with src:
                    _copy(src, dest / name, budget)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise AdapterArchiveError(
            f"the archive is damaged or truncated ({exc}): upload it again",
            code="invalid_archive",
        ) from exc


def _extract_zip(archive: Path, dest: Path, limit: int) -> None:
    budget = _Budget(limit)
    top: set[str] = set()
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if sum(info.file_size for info in infos) > limit:
                budget.spend(sum(info.file_size for info in infos))
            for info in infos:
                count = _count_entry(count)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise AdapterArchiveError(
                        f"unsafe archive entry {info.filename!r}: links are not allowed",
                        code="unsafe_archive_entry",
                    )
                kind = stat.S_IFMT(mode)  # 0 when the archiver recorded no type
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise AdapterArchiveError(
                        f"unsafe archive entry {info.filename!r}: only regular files are allowed",
                        code="unsafe_archive_entry",
                    )
                if info.flag_bits & 0x1:
                    raise AdapterArchiveError(
                        f"archive entry {info.filename!r} is encrypted: upload it unencrypted",
                        code="invalid_archive",
                    )
                name = _target_name(info.filename, top, is_dir=info.is_dir())
                if name is None:
                    continue
                with zf.open(info) as src:
                    _copy(src, dest / name, budget)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, zlib.error) as exc:
        raise AdapterArchiveError(
            f"the archive is damaged or uses an unsupported compression ({exc}): "
            "upload a standard .zip or .tar.gz",
            code="invalid_archive",
        ) from exc
