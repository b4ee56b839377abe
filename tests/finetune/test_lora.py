"""The LoRA method end to end: a run lowers the loss and leaves a peft adapter that loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmaas.finetune.lora_train import linear_module_names
from lmaas.finetune.trainer import Progress, TrainingRun

PEFT_DEPRECATION = "ignore:.*is_gradient_checkpointing.*:FutureWarning"  # peft → transformers


def test_linear_module_names_skip_the_head(tiny_untied_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_untied_llama_dir)
    assert linear_module_names(model) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
def test_lora_run_lowers_the_loss_and_exports_a_peft_adapter(
    tiny_llama_dir: Path, chat_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen: list[Progress] = []
    train, val = chat_file(32), chat_file(8, name="val.jsonl", seed=3)
    run = TrainingRun(
        base_model=tiny_llama_dir,
        training_file=train,
        validation_file=val,
        work_dir=tmp_path / "job",
        hyperparameters={
            "n_epochs": 3,
            "batch_size": 8,
            "learning_rate_multiplier": 50,
            "compute_dtype": "float32",
            "lora_rank": 8,
            "eval_every": 4,
        },
        method="lora",
        on_progress=seen.append,
    )
    result = run.run()
    assert result.status == "succeeded" and result.output_kind == "lora_adapter"
    assert [p.step for p in seen] == list(range(1, 13)) and seen[-1].total_steps == 12
    # a random tiny model with frozen embeddings: the adapter can only move it so far
    assert seen[0].train_loss - seen[-1].train_loss > 0.2
    vals = [p.val_loss for p in seen if p.val_loss is not None]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert seen[-1].trained_tokens == result.trained_tokens > 0
    out = result.output_dir
    assert out is not None and out == tmp_path / "job" / "output"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert (out / "adapter_model.safetensors").is_file()

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 520, 33, 2, 99, 13]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-3)
