"""The adapters library: safe extraction, safetensors headers, validation against a model."""

from __future__ import annotations

import io
import json
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lmaas.adapters import (
    AdapterArchiveError,
    AdapterError,
    AdapterValidationError,
    SafetensorsError,
    extract_adapter_archive,
    parse_adapter,
    read_safetensors_header,
    read_tensor,
    validate_adapter,
    verify_adapter_weights,
)
from lmaas.adapters.validation import _same_base
from lmaas.protocol import LoraTarget, RuntimeInfo
from tests.helpers.adapters import make_peft_adapter, pack_tar, pack_zip, write_adapter_files

LIMIT = 1 << 20
# What the runtime reports for the tiny test model (tests/helpers/tiny_model.py).
INFO = RuntimeInfo(
    model="tiny-llama",
    max_context=256,
    vocab_size=317,
    num_layers=2,
    dtype="float32",
    device="cpu",
    engine="reference",
    lora_targets={
        "q_proj": LoraTarget(in_features=64, out_features=64),
        "k_proj": LoraTarget(in_features=64, out_features=32),
        "v_proj": LoraTarget(in_features=64, out_features=32),
        "o_proj": LoraTarget(in_features=64, out_features=64),
        "gate_proj": LoraTarget(in_features=64, out_features=128),
        "up_proj": LoraTarget(in_features=64, out_features=128),
        "down_proj": LoraTarget(in_features=128, out_features=64),
    },
    max_lora_rank=16,
)
PREFIX = "base_model.model.model.layers"


def q_proj_tensors(rank: int = 4, *, layer: int = 0, in_f: int = 64, out_f: int = 64) -> dict:
    return {
        f"{PREFIX}.{layer}.self_attn.q_proj.lora_A.weight": ([rank, in_f], None),
        f"{PREFIX}.{layer}.self_attn.q_proj.lora_B.weight": ([out_f, rank], None),
    }


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "peft")


# Archives -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar-flat", "tar-folder", "zip"])
def test_a_peft_adapter_unpacks_and_fits_the_model(
    peft_adapter: Path, tmp_path: Path, kind: str
) -> None:
    archive = tmp_path / "a"
    if kind == "zip":
        pack_zip(peft_adapter, archive)
    else:
        pack_tar(peft_adapter, archive, prefix="my-adapter" if kind == "tar-folder" else "")
    out = extract_adapter_archive(archive, tmp_path / "out", max_total_bytes=LIMIT)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ], "README.md written by peft is skipped"
    spec = parse_adapter(out)
    assert (spec.rank, spec.target_modules, spec.layers) == (4, ["q_proj", "v_proj"], [0, 1])
    assert spec.scaling == 2.0
    validate_adapter(spec, INFO, max_rank=64)
    assert verify_adapter_weights(out) > 0


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../adapter_config.json", size=2), "'..'"),
        (_member("a/../../adapter_config.json", size=2), "'..'"),
        (_member("/etc/adapter_config.json", size=2), "absolute"),
        (_member("adapter_config.json", tarfile.SYMTYPE, link="/etc/passwd"), "links"),
        (_member("adapter_config.json", tarfile.LNKTYPE, link="/etc/passwd"), "links"),
        (_member("adapter_config.json", tarfile.CHRTYPE), "regular files"),
        (_member("adapter_config.json", tarfile.FIFOTYPE), "regular files"),
    ],
)
def test_unsafe_tar_entries_are_refused_and_nothing_escapes(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _tar_with(tmp_path, member, b"{}")
    dest = tmp_path / "deep" / "out"
    with pytest.raises(AdapterArchiveError, match=message) as exc:
        extract_adapter_archive(archive, dest, max_total_bytes=LIMIT)
    assert exc.value.code == "unsafe_archive_entry"
    assert not (tmp_path / "adapter_config.json").exists()
    assert not (tmp_path / "deep" / "adapter_config.json").exists()
    assert list(dest.iterdir()) == []


def test_symlink_in_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("adapter_config.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(AdapterArchiveError, match="links") as exc:
        extract_adapter_archive(path, tmp_path / "out", max_total_bytes=LIMIT)
    assert exc.value.code == "unsafe_archive_entry"


def test_zip_path_traversal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../../adapter_config.json", "{}")
    with pytest.raises(AdapterArchiveError, match=r"'\.\.'"):
        extract_adapter_archive(path, tmp_path / "out", max_total_bytes=LIMIT)
    assert not (tmp_path.parent / "adapter_config.json").exists()


def test_unexpected_files_are_refused(peft_adapter: Path, tmp_path: Path) -> None:
    archive = pack_zip(peft_adapter, tmp_path / "a.zip", extra={"pytorch_model.bin": b"pickle"})
    with pytest.raises(AdapterArchiveError, match="unexpected archive entry") as exc:
        extract_adapter_archive(archive, tmp_path / "out", max_total_bytes=LIMIT)
    assert exc.value.code == "unexpected_archive_entry"


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_archive_bombs_stop_at_the_limit(tmp_path: Path, fmt: str) -> None:
    """10 MiB of zeros compress to a few KiB; unpacking stops right after the 1 MiB limit."""
    zeros = b"\0" * (10 << 20)
    path = tmp_path / f"bomb.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("adapter_model.safetensors", zeros)
    else:
        with tarfile.open(path, "w:gz") as tar:
            tar.addfile(_member("adapter_model.safetensors", size=len(zeros)), io.BytesIO(zeros))
    assert path.stat().st_size < 100_000
    with pytest.raises(AdapterArchiveError, match="unpacks to more than") as exc:
        extract_adapter_archive(path, tmp_path / "out", max_total_bytes=LIMIT)
    assert exc.value.code == "archive_too_large"
    written = sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert written <= 2 * LIMIT


def test_garbage_and_incomplete_archives_are_refused(peft_adapter: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive at all")
    with pytest.raises(AdapterArchiveError) as exc:
        extract_adapter_archive(garbage, tmp_path / "o1", max_total_bytes=LIMIT)
    assert exc.value.code == "invalid_archive"

    truncated = tmp_path / "truncated.tar.gz"
    full = pack_tar(peft_adapter, tmp_path / "full.tar.gz").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(AdapterArchiveError) as exc:
        extract_adapter_archive(truncated, tmp_path / "o2", max_total_bytes=LIMIT)
    assert exc.value.code in ("invalid_archive", "missing_adapter_file")

    only_config = tmp_path / "only"
    only_config.mkdir()
    (only_config / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterArchiveError, match=r"lacks adapter_model\.safetensors"):
        extract_adapter_archive(
            pack_tar(only_config, tmp_path / "c.tgz"), tmp_path / "o3", max_total_bytes=LIMIT
        )


# Safetensors ----------------------------------------------------------------------------


def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "offsets"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        ({"t": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "trailing"),
    ],
)
def test_inconsistent_safetensors_headers_are_refused(
    tmp_path: Path, header: dict, data: bytes, why: str
) -> None:
    path = _raw_safetensors(tmp_path / "w.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=why):
        read_safetensors_header(path)


def test_a_huge_header_length_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="exceeds the file"):
        read_safetensors_header(path)


def test_bf16_and_f16_tensors_read_exactly(tmp_path: Path) -> None:
    values = np.array([1.5, -2.0, 0.0078125, 3.0], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    f16 = values.astype("<f2").tobytes()
    header = {
        "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "h": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]},
    }
    path = _raw_safetensors(tmp_path / "w.safetensors", header, bf16 + f16)
    tensors = read_safetensors_header(path)
    np.testing.assert_array_equal(read_tensor(path, tensors["b"]).ravel(), values)
    np.testing.assert_array_equal(read_tensor(path, tensors["h"]).astype(np.float32), values)


# Validation against the model -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "rank", "kwargs", "code"),
    [
        (q_proj_tensors(8), 4, {}, "shape_mismatch"),  # tensors say rank 8, config 4
        (q_proj_tensors(4, in_f=32), 4, {}, "shape_mismatch"),  # another model's shapes
        (q_proj_tensors(4, layer=5), 4, {}, "shape_mismatch"),  # no layer 5
        (q_proj_tensors(32), 32, {}, "rank_too_large"),  # INFO serves rank <= 16
        (
            {
                f"{PREFIX}.0.mlp.w_proj.lora_A.weight": ([4, 64], None),
                f"{PREFIX}.0.mlp.w_proj.lora_B.weight": ([64, 4], None),
            },
            4,
            {"targets": ["w_proj"]},
            "unsupported_target_module",
        ),
        (q_proj_tensors(4), 4, {"base": "meta-llama/Llama-3.1-8B"}, "base_model_mismatch"),
    ],
)
def test_adapters_that_do_not_fit_the_model_are_refused(
    tmp_path: Path, tensors: dict, rank: int, kwargs: dict, code: str
) -> None:
    folder = write_adapter_files(tmp_path / "a", tensors, rank=rank, **kwargs)
    with pytest.raises(AdapterValidationError) as exc:
        validate_adapter(parse_adapter(folder), INFO, max_rank=64)
    assert exc.value.code == code
    assert exc.value.message  # says what was wrong


@pytest.mark.parametrize(
    ("config", "tensors", "match"),
    [
        ({"peft_type": "PREFIX_TUNING"}, None, "only LoRA"),
        ({"use_dora": True}, None, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({"r": 0}, None, "positive integer"),
        ({}, {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": ([4, 64], None)}, "without its lora_B"),
        ({}, {"lm_head.weight": ([4, 4], None)}, "unexpected tensor"),
    ],
)
def test_configs_and_tensors_lmaas_cannot_serve_are_refused(
    tmp_path: Path, config: dict, tensors: dict | None, match: str
) -> None:
    folder = write_adapter_files(
        tmp_path / "a", tensors or q_proj_tensors(4), rank=4, extra_config=config
    )
    with pytest.raises(AdapterError, match=match):
        parse_adapter(folder)


def test_non_finite_weights_fail_the_deep_check(tmp_path: Path) -> None:
    tensors = q_proj_tensors(4)
    name_b = f"{PREFIX}.0.self_attn.q_proj.lora_B.weight"
    tensors[name_b] = ([64, 4], [0.0] * 255 + [float("nan")])
    folder = write_adapter_files(tmp_path / "a", tensors, rank=4)
    validate_adapter(parse_adapter(folder), INFO, max_rank=64)  # the header is fine
    with pytest.raises(AdapterError) as exc:
        verify_adapter_weights(folder)
    assert exc.value.code == "non_finite_weights"


@pytest.mark.parametrize(
    ("claimed", "served", "same"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", True),
        (
            "/home/me/.lmaas/models/SmolLM2-135M-Instruct.Q4_1-a8d1fc05",
            "SmolLM2-135M-Instruct",
            True,
        ),
        ("/tmp/x/tiny-llama/", "tiny-llama", True),
        ("SmolLM2-360M-Instruct", "SmolLM2-135M-Instruct", False),
        ("tiny-llamas", "tiny-llama", False),
    ],
)
def test_base_model_names_compare_by_last_component(claimed: str, served: str, same: bool) -> None:
    assert _same_base(claimed, served) is same
