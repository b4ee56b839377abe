#!/usr/bin/env bash
# On a lent GPU machine (device tool, carry [".whl", ".gpu"]): the CUDA tests, the
# speculative engine's tests moved to CUDA, and the LoRA benchmark on CUDA (--quick, then
# the full run if time allows). Figures land in $OUT. Prepare with bench/gpu/prepare.sh.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD/operators:$PWD LMAAS_HOME=/tmp/lmaas-home
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 .gpu/patch_tests.py || exit 1
PYTEST=(python3 -m pytest -p no:cacheprovider -o filterwarnings= -o addopts=-ra -q)
timeout 150 "${PYTEST[@]}" tests/engine tests/finetune/test_qft_model.py -k cuda > "$OUT/cuda_tests.log" 2>&1
tail -4 "$OUT/cuda_tests.log"
timeout 120 "${PYTEST[@]}" tests/engine/test_speculative_engine.py > "$OUT/spec_cuda_tests.log" 2>&1
grep -E "^E |^FAILED|passed|failed" "$OUT/spec_cuda_tests.log" | head -30
python3 .gpu/random_weights.py .gpu/model /tmp/smollm2-random | tail -1
timeout 200 python3 bench/lora_throughput.py --quick --device cuda --model /tmp/smollm2-random \
  --out "$OUT/lora_throughput_cuda_quick.json" > "$OUT/bench_quick.log" 2>&1
tail -12 "$OUT/bench_quick.log"
