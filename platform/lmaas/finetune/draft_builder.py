"""A draft model for speculation, built from the target's own layers; saved as hot-swappable versions.

There is no smaller model of the default family here, so the draft is cut from the target:
its token embeddings, `depth` of its decoder layers (which ones: `layer_plan`, chosen by
measured acceptance — `select_layers`), its final norm, and its output head restricted to
the `vocab_size` most frequent tokens of the workload (frequency-ranked vocabulary: on
SmolLM2-135M the 49,152 × 576 output head alone costs more than 8 of its 30 layers, and
the tokens a draft gets right are the frequent ones; a token outside that vocabulary is
simply never proposed, verification stays exact). It is then distilled (`distill.py`).

`DraftLM` is the model the proposers run: a transformers Llama with `depth` layers whose
logits are scattered back to the target's vocabulary (−inf outside the draft's), so that
`HFDraftBackend` and verification see the target's token ids.

Versions: `save_draft_version` writes a draft as a safetensors folder `v0001`, `v0002`, …
under any fsspec URL, then — last, atomically — the `LATEST` file naming it; a runtime
polling `latest_draft_version` therefore never sees a half-written draft, and swaps it in
between steps.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import fsspec
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "DraftInfo",
    "DraftLM",
    "build_draft",
    "extend_draft_vocab",
    "frequent_tokens",
    "latest_draft_version",
    "layer_plan",
    "load_draft",
    "save_draft",
    "save_draft_version",
]

Strategy = Literal["first", "spread", "first_last"]
_INFO = "lmaas-draft.json"
_WEIGHTS = "model.safetensors"


@dataclass
class DraftInfo:
    """What a draft folder holds, beside its weights."""

    source_layers: list[int]
    draft_vocab_size: int
    base_model: str = ""
    version: int = 0
    acceptance: float | None = None  # greedy acceptance measured when it was saved
    note: str = ""


def layer_plan(num_layers: int, depth: int, strategy: Strategy = "first") -> list[int]:
    """Which of the target's `num_layers` layers a draft of `depth` layers copies.

    `first`: the bottom `depth`; `spread`: evenly spaced from the first to the last;
    `first_last`: the bottom `depth − 1` and the last.
    """
    if not 1 <= depth <= num_layers:
        raise ValueError(f"depth must be within 1..{num_layers}, got {depth}")
    if strategy == "first":
        return list(range(depth))
    if strategy == "first_last":
        return [*range(depth - 1), num_layers - 1] if depth > 1 else [0]
    if strategy == "spread":
        if depth == 1:
            return [0]
        step = (num_layers - 1) / (depth - 1)
        return sorted({round(i * step) for i in range(depth)})
    raise ValueError(f"unknown strategy {strategy!r}: use 'first', 'spread' or 'first_last'")


def frequent_tokens(
    sequences: Sequence[Sequence[int]], vocab_size: int, size: int, always: Sequence[int] = ()
) -> list[int]:
    """The `size` most frequent token ids of `sequences` (plus `always`, e.g. EOS), sorted."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for seq in sequences:
        if len(seq):
            counts += torch.bincount(
                torch.as_tensor(list(seq), dtype=torch.long), minlength=vocab_size
            )
    counts[torch.as_tensor(list(always), dtype=torch.long)] = counts.max() + 1 if len(always) else 0
    size = min(size, vocab_size)
    return sorted(torch.topk(counts, size).indices.tolist())


class DraftLM(nn.Module):
    """A shallow Llama with a (possibly) reduced output vocabulary, speaking the target's ids."""

    def __init__(
        self, model: LlamaForCausalLM, vocab_ids: torch.Tensor | None, info: DraftInfo
    ) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.register_buffer(
            "vocab_ids", vocab_ids if vocab_ids is not None else torch.empty(0, dtype=torch.long)
        )

    @property
    def config(self) -> LlamaConfig:
        return self.model.config

    @property
    def full_vocab_size(self) -> int:
        return self.model.config.vocab_size

    def draft_logits(self, **kwargs: Any) -> torch.Tensor:
        """Logits over the draft's own vocabulary (what training uses)."""
        return self.model(**kwargs).logits

    def to_full_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        if self.vocab_ids.numel() == 0:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.full_vocab_size), float("-inf"))
        return full.index_copy_(-1, self.vocab_ids, logits)

    def forward(self, **kwargs: Any) -> SimpleNamespace:
        """transformers-style: `.logits` over the target's vocabulary."""
        return SimpleNamespace(logits=self.to_full_vocab(self.draft_logits(**kwargs)))


def build_draft(
    target: LlamaForCausalLM,
    layers: Sequence[int],
    vocab_ids: Sequence[int] | None = None,
    *,
    base_model: str = "",
) -> DraftLM:
    """A draft copying `target`'s embeddings, `layers`, final norm and output head rows."""
    num = target.config.num_hidden_layers
    if not layers or any(not 0 <= i < num for i in layers):
        raise ValueError(f"layers must be a non-empty list of indices within 0..{num - 1}")
    config = LlamaConfig(**target.config.to_dict())
    config.num_hidden_layers = len(layers)
    config.tie_word_embeddings = False
    for key in ("layer_types",):
        if getattr(config, key, None) is not None:
            setattr(config, key, [getattr(target.config, key)[i] for i in layers])
    model = LlamaForCausalLM(config).to(target.dtype)
    src = target.model
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(src.embed_tokens.weight)
        for dst_layer, i in zip(model.model.layers, layers, strict=True):
            dst_layer.load_state_dict(src.layers[i].state_dict())
        model.model.norm.weight.copy_(src.norm.weight)
        head = target.get_output_embeddings().weight
        ids = None
        if vocab_ids is not None:
            ids = torch.as_tensor(sorted(set(vocab_ids)), dtype=torch.long)
            model.lm_head = nn.Linear(config.hidden_size, len(ids), bias=False).to(target.dtype)
            model.lm_head.weight.copy_(head[ids])
        else:
            model.lm_head.weight.copy_(head)
    info = DraftInfo(
        source_layers=list(layers),
        draft_vocab_size=len(ids) if ids is not None else config.vocab_size,
        base_model=base_model,
    )
    return DraftLM(model.eval(), ids, info)


def extend_draft_vocab(draft: DraftLM, token_ids: Sequence[int], head: torch.Tensor) -> int:
    """Add `token_ids` to a reduced-vocabulary draft, their output rows copied from the
    target's output head `head` (V, H); returns how many were new. The draft is changed in
    place (for traffic whose tokens the original vocabulary missed, e.g. code)."""
    if draft.vocab_ids.numel() == 0:
        return 0
    have = set(draft.vocab_ids.tolist())
    new = sorted({int(t) for t in token_ids} - have)
    if not new:
        return 0
    ids = torch.as_tensor(sorted(have | set(new)), dtype=torch.long)
    old_head = draft.model.lm_head.weight.detach()
    weight = head.detach()[ids].to(old_head.dtype).clone()
    position = {t: i for i, t in enumerate(ids.tolist())}
    keep = torch.as_tensor([position[t] for t in draft.vocab_ids.tolist()], dtype=torch.long)
    weight[keep] = old_head  # trained rows stay as they are
    lm_head = nn.Linear(weight.shape[1], len(ids), bias=False).to(old_head.device, old_head.dtype)
    with torch.no_grad():
        lm_head.weight.copy_(weight)
    draft.model.lm_head = lm_head
    draft.vocab_ids = ids.to(draft.vocab_ids.device)
    draft.info.draft_vocab_size = len(ids)
    return len(new)


def save_draft(draft: DraftLM, folder: Path | str) -> Path:
    """Write a draft as a folder: config.json, model.safetensors (+ vocab), lmaas-draft.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    draft.model.config.save_pretrained(folder)
    tensors = {k: v.detach().contiguous() for k, v in draft.model.state_dict().items()}
    if draft.vocab_ids.numel():
        tensors["lmaas.vocab_ids"] = draft.vocab_ids.contiguous()
    save_file(tensors, str(folder / _WEIGHTS))
    (folder / _INFO).write_text(json.dumps(asdict(draft.info), indent=2))
    return folder


def load_draft(
    folder: Path | str, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DraftLM:
    """Load a folder written by `save_draft` (a local path, or any fsspec URL)."""
    if isinstance(folder, str) and "://" in folder and not folder.startswith("file://"):
        fs, path = fsspec.core.url_to_fs(folder)
        local = Path(tempfile.mkdtemp(prefix="lmaas-draft-"))
        try:
            fs.get(f"{path.rstrip('/')}/", str(local) + "/", recursive=True)
            return load_draft(local, dtype=dtype, device=device)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    folder = Path(str(folder).removeprefix("file://"))
    if not (folder / _INFO).is_file():
        raise FileNotFoundError(f"{folder} is not a draft folder (no {_INFO})")
    config = LlamaConfig.from_pretrained(folder)
    info = DraftInfo(**json.loads((folder / _INFO).read_text()))
    tensors = load_file(str(folder / _WEIGHTS))
    vocab_ids = tensors.pop("lmaas.vocab_ids", None)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if vocab_ids is not None:
        model.lm_head = nn.Linear(config.hidden_size, len(vocab_ids), bias=False, device="meta")
    model.load_state_dict(tensors, assign=True, strict=True)
    # Non-persistent buffers (the rotary frequencies) are not in the file: rebuild them.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model = model.to(device=device, dtype=dtype or tensors["lm_head.weight"].dtype)
    return DraftLM(model.eval(), vocab_ids.to(device) if vocab_ids is not None else None, info)


def latest_draft_version(root: str) -> tuple[int, str] | None:
    """(version, URL of its folder) named by `root`/LATEST, or None if none was saved."""
    fs, path = fsspec.core.url_to_fs(root)
    latest = f"{path.rstrip('/')}/LATEST"
    if not fs.exists(latest):
        return None
    name = fs.cat_file(latest).decode().strip()
    return int(name.lstrip("v")), f"{root.rstrip('/')}/{name}"


def save_draft_version(draft: DraftLM, root: str) -> tuple[int, str]:
    """Save `draft` as the next version under the fsspec URL `root`; returns (version, URL).

    The folder is uploaded completely before `LATEST` is switched to it (atomically: a
    temporary file renamed over it), so readers see the old version or the new, whole.
    """
    fs, path = fsspec.core.url_to_fs(root)
    path = path.rstrip("/")
    current = latest_draft_version(root)
    existing = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.exists(path) else []
    numbers = [int(n[1:]) for n in existing if n.startswith("v") and n[1:].isdigit()]
    version = max([*numbers, current[0] if current else 0]) + 1
    name = f"v{version:04d}"
    draft.info.version = version
    tmp = Path(tempfile.mkdtemp(prefix="lmaas-draft-"))
    try:
        save_draft(draft, tmp / name)
        fs.makedirs(path, exist_ok=True)
        fs.put(str(tmp / name), f"{path}/", recursive=True)
        with fs.open(f"{path}/.LATEST.tmp", "w") as f:
            f.write(name + "\n")
        fs.mv(f"{path}/.LATEST.tmp", f"{path}/LATEST")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version, f"{root.rstrip('/')}/{name}"
