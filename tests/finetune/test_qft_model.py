"""QFT on a (tiny) Llama: conversion, updates inside backward, training, and both exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmaas.finetune.batching import pack_examples
from lmaas.finetune.data import tokenize_examples, validate_chat_jsonl
from lmaas.finetune.loss import causal_lm_loss
from lmaas.finetune.qft import QFTLion, QuantWeight, quantize_model
from lmaas.finetune.qft.export import choose_rank, svd_factors
from lmaas.finetune.trainer import TrainingRun
from tests.finetune.helpers import arithmetic_chats, write_jsonl


def load(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def a_batch(folder: Path, n: int = 8):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = "".join(json.dumps(r) + "\n" for r in arithmetic_chats(n)).encode()
    seqs, _ = tokenize_examples(tokenizer, validate_chat_jsonl(data), 256)
    return pack_examples(seqs, 256)


def test_conversion_keeps_the_model_and_ties(tiny_llama_dir: Path) -> None:
    fp32 = load(tiny_llama_dir)
    batch = a_batch(tiny_llama_dir)
    with torch.no_grad():
        want = fp32.model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        )
    qft = quantize_model(load(tiny_llama_dir), compute_dtype=torch.float32)
    assert qft.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert qft.model.lm_head.qweight is qft.model.model.embed_tokens.qweight
    # every parameter left is a norm weight; the quantized weights are no parameters at all
    assert all("norm" in name for name in qft.small_params)
    assert {n for n, _ in qft.model.named_parameters()} == set(qft.small_params)
    with torch.no_grad():
        got = qft.model.model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        )
    rel = (got.last_hidden_state - want.last_hidden_state).norm() / want.last_hidden_state.norm()
    assert float(rel) < 0.02


def test_updates_happen_inside_backward_layer_by_layer(tiny_llama_dir: Path) -> None:
    qft = quantize_model(load(tiny_llama_dir), compute_dtype=torch.float32)
    opt = QFTLion(qft.weights, qft.small_params, lr=1e-3)
    before = {n: w.dense.data.clone() for n, w in qft.weights.items()}
    batch = a_batch(tiny_llama_dir)
    opt.begin_step()
    loss = causal_lm_loss(qft.model, batch)
    loss.backward()
    # end_step has not run: backward itself moved every integer weight
    for name, w in qft.weights.items():
        assert not torch.equal(before[name], w.dense.data), name
        assert w.dense.data.dtype == torch.int8
    assert all(p.grad is not None for p in qft.small_params.values())
    opt.end_step()
    assert all(p.grad is None for p in qft.small_params.values())
    # the tied embedding waited for both of its gradients in an int8 stash
    assert 0 < opt.peak_stash_bytes <= qft.weights["model.embed_tokens.weight"].dense.nbytes


def test_a_forward_without_backward_is_reported(tiny_llama_dir: Path) -> None:
    qft = quantize_model(load(tiny_llama_dir), compute_dtype=torch.float32)
    opt = QFTLion(qft.weights, qft.small_params, lr=1e-3)
    opt.begin_step()
    causal_lm_loss(qft.model, a_batch(tiny_llama_dir))
    with pytest.raises(RuntimeError, match="backward did not reach"):
        opt.end_step()


def test_state_bytes_per_parameter_on_an_untied_model(tiny_untied_llama_dir: Path) -> None:
    qft = quantize_model(load(tiny_untied_llama_dir), compute_dtype=torch.float32)
    opt = QFTLion(qft.weights, qft.small_params, lr=1e-4)
    opt.begin_step()
    causal_lm_loss(qft.model, a_batch(tiny_untied_llama_dir)).backward()
    opt.end_step()
    assert opt.peak_stash_bytes == 0  # nothing used twice: no gradient is ever stored
    total = sum(opt.state_bytes().values()) / qft.num_parameters
    # int8 weight + int8 momentum + 2 scales per 32 (hidden 32: blocks of 32) + 1% outliers
    assert total == pytest.approx(1 + 1 + 2 * 4 / 32 + 0.08, abs=0.02)  # vs 16 for fp32 AdamW


def test_choose_rank_and_svd_factors() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert choose_rank(s, 0.5) == 1  # 9/14
    assert choose_rank(s, 0.9) == 2  # 13/14 ≥ 0.9
    assert choose_rank(s, 1.0) == 3
    assert choose_rank(torch.zeros(3), 0.9) == 0
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 8, generator=g) @ torch.randn(8, 30, generator=g)
    b, a, kept = svd_factors(delta, 8)
    torch.testing.assert_close(b @ a, delta, atol=1e-4, rtol=1e-4)
    assert kept == pytest.approx(1.0)


@pytest.fixture(scope="module")
def qft_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> dict[str, Path]:
    """One short QFT run per export kind on the tiny model (large lr: visible deltas)."""
    root = tmp_path_factory.mktemp("qft-runs")
    data = write_jsonl(root / "train.jsonl", arithmetic_chats(32))
    out = {}
    for export in ("full", "lora"):
        run = TrainingRun(
            base_model=tiny_llama_dir,
            training_file=data,
            work_dir=root / export,
            hyperparameters={
                "method": "qft",
                "n_epochs": 3,
                "batch_size": 8,
                "learning_rate_multiplier": 100,
                "compute_dtype": "float32",
                "qft_export": export,
                "qft_export_energy": 0.8,
                "qft_export_max_rank": 16,
            },
            model_cache_dir=root / "cache",
        )
        result = run.run()
        assert result.status == "succeeded"
        out[export] = root / export
    out["data"] = data
    return out


def test_qft_training_reduces_the_loss(qft_runs: dict[str, Path], tiny_llama_dir: Path) -> None:
    result = json.loads((qft_runs["full"] / "result.json").read_text())
    batch = a_batch(tiny_llama_dir, 32)
    with torch.no_grad():
        before = float(causal_lm_loss(load(tiny_llama_dir), batch))
        after = float(causal_lm_loss(load(qft_runs["full"] / "output"), batch))
    assert after < before - 0.5, (before, after)
    assert result["output_kind"] == "full_model"
    state = result["details"]["state_bytes"]
    assert state["optimizer"] < state["weights"]  # int8 momentum


def test_full_export_is_a_transformers_model_folder(qft_runs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    out = qft_runs["full"] / "output"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    model = load(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2 + 3?"}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


PEFT_DEPRECATION = "ignore:.*is_gradient_checkpointing.*:FutureWarning"  # peft → transformers


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
def test_lora_export_reproduces_the_delta_within_the_energy(
    qft_runs: dict[str, Path], tiny_llama_dir: Path
) -> None:
    from peft import PeftModel

    out = qft_runs["lora"] / "output"
    result = json.loads((qft_runs["lora"] / "result.json").read_text())
    config = json.loads((out / "adapter_config.json").read_text())
    rank = result["details"]["rank"]
    assert config["r"] == rank == config["lora_alpha"] and 1 <= rank <= 16
    adapter = load_file(out / "adapter_model.safetensors")
    base = load(tiny_llama_dir)
    # the deltas the adapter encodes: trained weights (full export of the same run) minus the
    # quantized starting point; each is kept to the asked energy (rank capped at 16)
    trained = load(qft_runs["full"] / "output")  # same data, seed, steps: same trajectory
    checked = 0
    for name, param in base.named_parameters():
        if not name.endswith("proj.weight"):
            continue
        start = QuantWeight.from_float(param, outlier_fraction=0.01, block_size=64).dequantize()
        delta = trained.get_parameter(name).detach() - start
        prefix = "base_model.model." + name.removesuffix(".weight")
        a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
        err = float((delta - b @ a).norm() ** 2)
        assert choose_rank(torch.linalg.svdvals(delta.double()), 0.8) <= rank
        assert err <= (1 - 0.8) * float(delta.norm() ** 2) * 1.001 + 1e-12, name
        checked += 1
    assert checked == 14
    # peft loads it and it changes the outputs
    model = PeftModel.from_pretrained(load(tiny_llama_dir), out).eval()
    batch = a_batch(tiny_llama_dir)
    with torch.no_grad():
        plain = base(input_ids=batch.input_ids, use_cache=False).logits
        adapted = model(input_ids=batch.input_ids, use_cache=False).logits
    assert not torch.allclose(plain, adapted, atol=1e-4)


@pytest.mark.slow
def test_compiled_kernels_compute_what_the_eager_ones_do(tiny_llama_dir: Path) -> None:
    """The fused (torch.compile) path: same noise (hash RNG), same steps, same weights."""
    batch = a_batch(tiny_llama_dir)
    runs = []
    for fused in (False, True):
        qft = quantize_model(load(tiny_llama_dir), compute_dtype=torch.float32, fused=fused)
        opt = QFTLion(qft.weights, qft.small_params, lr=3e-3, fused=fused)
        losses = []
        for _ in range(4):
            opt.begin_step()
            loss = causal_lm_loss(qft.model, batch)
            loss.backward()
            opt.end_step()
            losses.append(float(loss.detach()))
        runs.append((losses, {n: w.dense.data.clone() for n, w in qft.weights.items()}))
    (eager_losses, eager_w), (fused_losses, fused_w) = runs
    assert fused_losses == pytest.approx(eager_losses, rel=1e-5)
    same = sum(int((eager_w[n] == fused_w[n]).sum()) for n in eager_w)
    assert same / sum(w.numel() for w in eager_w.values()) > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True])
def test_qft_trains_on_cuda_with_the_same_code(tiny_llama_dir: Path, fused: bool) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).cuda()
    qft = quantize_model(model, fused=fused)
    assert qft.compute_dtype in (torch.bfloat16, torch.float16)
    opt = QFTLion(qft.weights, qft.small_params, lr=3e-3, fused=fused)
    batch = a_batch(tiny_llama_dir).to("cuda")
    losses = []
    for _ in range(8):
        opt.begin_step()
        loss = causal_lm_loss(qft.model, batch)
        loss.backward()
        opt.end_step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(
        w.dense.data.is_cuda and w.dense.data.dtype == torch.int8 for w in qft.weights.values()
    )
