"""Random weights with the shapes of a model folder's config, for the GPU check.

The default model's GGUF (98 MB) cannot travel to a lent GPU machine (transfers are capped
at 64 MiB), so the check decodes with random weights of SmolLM2-135M's exact shapes and its
real tokenizer: decode throughput does not depend on the values.

    python bench/gpu/random_weights.py SRC_FOLDER DST_FOLDER
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dst, safe_serialization=True)
    for f in src.iterdir():
        if f.name != "config.json" and f.is_file():
            shutil.copy(f, dst / f.name)
    print("random model", dst, sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
