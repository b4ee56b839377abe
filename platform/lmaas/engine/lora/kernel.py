"""The compiled CPU LoRA kernel (`bgmv.cpp`): build once, load, call; or say why not.

The kernel is a gather-GEMV: each token's row times its own slot's A and B, read in place
from the bank, float accumulation, padding rows of lower-rank adapters skipped. It is built
with the system C++ compiler (`-O3 -march=native`, about a second) the first time it is
needed, into a cache keyed by the source, the compiler and the CPU's flags:
`$LMAAS_HOME/kernels` (`~/.lmaas/kernels` by default). No compiler, a failed build or
`LMAAS_LORA_KERNEL=0` leaves the torch path (`ops.lora_shrink` / `ops.lora_expand`) in
use, logged once. With OpenMP (linked against the libgomp torch has loaded, so one thread
pool) it shares the groups out among torch's threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

__all__ = ["KernelPlan", "describe", "load", "run", "wanted"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("bgmv.cpp")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17"]
OPENMP = "-fopenmp"  # threads over groups; dropped (one thread) where the compiler lacks it
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_P, _I = ctypes.c_void_p, ctypes.c_int64


class KernelPlan:
    """The step's LoRA tokens as groups for the kernel: group g uses bank slot
    `group_slot[g]` for tokens `token_index[group_start[g]:group_start[g + 1]]`."""

    def __init__(self, groups: list[tuple[int, list[int]]], threads: int = 1) -> None:
        if 0 < len(groups) < threads:  # fewer groups than threads: split them by tokens
            pieces = -(-threads // len(groups))
            groups = [
                (slot, members[i::pieces])
                for slot, members in groups
                for i in range(min(pieces, len(members)))
            ]
        self.num_groups = len(groups)
        starts = [0]
        tokens: list[int] = []
        for _, members in groups:
            tokens.extend(members)
            starts.append(len(tokens))
        self.group_slot = torch.tensor([slot for slot, _ in groups], dtype=torch.int64)
        self.group_start = torch.tensor(starts, dtype=torch.int64)
        self.token_index = torch.tensor(tokens or [0], dtype=torch.int64)


def _cache_dir() -> Path:
    home = os.environ.get("LMAAS_HOME")
    return (Path(home) if home else Path.home() / ".lmaas") / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _build(compiler: str) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"lmaas_bgmv_{key}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        command = [compiler, *FLAGS, "-o", tmp, str(SOURCE)]
        done = subprocess.run([*command, OPENMP], capture_output=True, text=True)
        if done.returncode != 0:
            log.info("LoRA CPU kernel: no OpenMP (%s); built for one thread", done.stderr[-300:])
            subprocess.run(command, capture_output=True, text=True, check=True)
        os.replace(tmp, target)  # atomic: concurrent builders agree on the result
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in folder.glob("lmaas_bgmv_*.so"):  # builds of other sources or compilers
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def enabled() -> bool:
    """The `lora_kernel` setting (LMAAS_LORA_KERNEL): on unless it says 0 / false / off / no.

    Read from the environment on each call rather than through `lmaas.config`, so the engine
    library stays free of the deployment's settings and a test can flip it."""
    value = os.environ.get("LMAAS_LORA_KERNEL", "").strip().lower()
    return value not in ("0", "false", "off", "no")


@cache
def load() -> ctypes.CDLL | None:
    """The loaded kernel library (built on first use), or None (the reason is logged once)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.warning("no C++ compiler found: the LoRA CPU kernel is off, using the torch path")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("LoRA CPU kernel build failed, using the torch path: %s", detail[-2000:])
        return None
    fn = lib.lmaas_lora_bgmv
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_int, _P, _I, _I, _P, _I, _I, _P, _P, _P, _I]
    fn.argtypes += [_P, _P, _P, _P, _P, _I, ctypes.c_int]
    return lib


def wanted(x: torch.Tensor, weights: torch.Tensor) -> bool:
    """Whether this call should use the kernel (CPU, float32/bfloat16, the setting allows)."""
    if x.device.type != "cpu" or x.dtype not in _DTYPES or weights.dtype not in _DTYPES:
        return False
    if not enabled():
        _log_once("LoRA CPU kernel off (LMAAS_LORA_KERNEL); using the torch path")
        return False
    return load() is not None


@cache
def _log_once(message: str) -> None:
    log.info(message)


def describe() -> str:
    """One line for reports: whether the CPU kernel serves LoRA here, and how it was built."""
    if not enabled():
        return "off (LMAAS_LORA_KERNEL)"
    lib = load()
    if lib is None:
        return "unavailable (no compiler or build failed): torch path"
    return f"compiled gather-GEMV ({' '.join(FLAGS)}, {Path(lib._name).name})"


class Call:
    """The fixed arguments of one projection's kernel call (B pointers, output layout)."""

    def __init__(self, b: list[torch.Tensor], offsets: list[int]) -> None:
        self.b = b
        self.pointers = (ctypes.c_void_p * len(b))(*[t.data_ptr() for t in b])
        self.out = torch.tensor([t.shape[-1] for t in b], dtype=torch.int64)
        self.offsets = torch.tensor(offsets, dtype=torch.int64)


def run(
    x: torch.Tensor,
    a: torch.Tensor,
    call: Call,
    rank: int,
    y: torch.Tensor,
    slot_rank: torch.Tensor,
    plan: KernelPlan,
) -> None:
    """y[t, part j] += (x[t] · A_j[slot]ᵀ) · B_j[slot] for every token of `plan` (in place)."""
    lib = load()
    assert lib is not None and y.stride(-1) == 1 and a.is_contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    status = lib.lmaas_lora_bgmv(
        _DTYPES[x.dtype],
        _DTYPES[a.dtype],
        x.data_ptr(),
        x.stride(0),
        x.shape[1],
        a.data_ptr(),
        rank,
        len(call.b),
        call.pointers,
        call.out.data_ptr(),
        y.data_ptr(),
        y.stride(0),
        call.offsets.data_ptr(),
        slot_rank.data_ptr(),
        plan.group_slot.data_ptr(),
        plan.group_start.data_ptr(),
        plan.token_index.data_ptr(),
        plan.num_groups,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"LoRA kernel: unsupported dtypes {x.dtype}, {a.dtype}")
