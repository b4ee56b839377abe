#!/usr/bin/env bash
# Prepare, on the development machine, what a lent GPU machine needs for bench/gpu/check.sh:
# wheels of the Python packages its image lacks (.whl/) and SmolLM2's config + tokenizer
# (.gpu/model; the 98 MB GGUF cannot travel, the check builds random weights of its shapes).
# Both folders are git-ignored: name them in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
mkdir -p .whl .gpu/model
pkgs=""
for p in pydantic pydantic_core pydantic-settings python-dotenv typing-inspection annotated-types gguf pytest-asyncio typing_extensions; do
  pkgs="$pkgs $p==$($PY -c "import importlib.metadata as m; print(m.version('$p'))")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pkgs
model=$(PYTHONPATH=platform $PY -c "
from lmaas.config import Settings, default_model_path
from lmaas.engine.model_files import materialize_model
print(materialize_model(default_model_path(), Settings().model_cache_dir))")
find "$model" -maxdepth 1 -type f ! -name '*.safetensors' ! -name 'lmaas-source.json' -exec cp {} .gpu/model/ \;
cp bench/gpu/random_weights.py bench/gpu/patch_tests.py .gpu/
du -sh .whl .gpu
