"""GGUF → safetensors conversion: a tiny llama written as llama.cpp writes it comes back exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmaas.engine.model_files import ModelFilesError, materialize_model
from lmaas.engine.tokenizer import Tokenizer
from tests.engine.conftest import build_tiny_model

_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (what its converter writes)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(hf_folder: Path, path: Path) -> None:
    """Write `hf_folder` (a tiny llama) as a GGUF file, gate/up quantized to Q8_0."""
    import gguf
    from safetensors.torch import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    tok = json.loads((hf_folder / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [a["content"] for a in tok["added_tokens"]]
    tokens += [f"<unused{i}>" for i in range(config["vocab_size"] - len(tokens))]
    types = [1] * len(vocab) + [3] * len(tok["added_tokens"])
    types += [1] * (len(tokens) - len(types))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(
        [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    )
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    state = load_file(str(hf_folder / "model.safetensors"))
    for name, tensor in state.items():
        w = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, suffix = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{_NAMES[module]}.{suffix}"
        if ".attn_q." in gguf_name:
            w = _permute(w, heads)
        elif ".attn_k." in gguf_name:
            w = _permute(w, kv_heads)
        if ".ffn_" in gguf_name and w.shape[-1] % 32 == 0:  # Q8_0 blocks of 32
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                gguf_name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("layout", ["llama-tied", "llama3-scaled"])
def test_gguf_converts_to_the_same_model(tmp_path: Path, layout: str) -> None:
    from transformers import AutoModelForCausalLM

    original = build_tiny_model(tmp_path / "hf", layout if layout == "llama-tied" else "llama-tied")
    config = json.loads((original / "config.json").read_text())
    config["tie_word_embeddings"] = layout == "llama-tied"
    if layout != "llama-tied":  # untied: give the model its own output matrix
        model = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.08)
        model.save_pretrained(original)
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(original, gguf_path)
    folder = materialize_model(gguf_path, tmp_path / "cache")
    assert materialize_model(gguf_path, tmp_path / "cache") == folder, "cached on second use"

    ref = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    with torch.no_grad():
        diff = (ref(ids).logits - got(ids).logits).abs().max().item()
    assert diff < 0.05, f"Q8_0 MLP weights: logits within 0.05, got {diff}"

    ours, theirs = Tokenizer(folder), Tokenizer(original)
    for text in ["the cat", "héllo 世界", "a1 b22 c333"]:
        assert ours.decode(ours.encode(text)) == text
        assert ours.encode(text) == theirs.encode(text)
    assert ours.eos_token == "</s>" and ours.chat_template is not None


def test_bad_model_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match="does not exist"):
        materialize_model(tmp_path / "nope.gguf", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFilesError, match=r"without config\.json"):
        materialize_model(tmp_path / "empty", tmp_path)
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file at all, really")
    with pytest.raises(ValueError, match="not a GGUF file"):
        materialize_model(tmp_path / "fake.gguf", tmp_path / "cache")
