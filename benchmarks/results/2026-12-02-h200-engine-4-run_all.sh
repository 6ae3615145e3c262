#!/bin/bash
# engine-speed GPU call: serving (served + offline + peer + LoRA), evaluation, decode profile; one run.
set -o pipefail
cd .dev/engine-speed
python3 -c "import tunebench.cli, fastapi, uvicorn" || exit 3
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
mkdir -p $OUT/serve
echo "=== serve_throughput --offline $(date +%T)"
timeout 290 python3 benchmarks/serve_throughput.py --offline --warmup 2 --budget-s 265 --out $OUT/serve
echo "=== generation_engines $(date +%T)"
timeout 110 python3 benchmarks/generation_engines.py --engines batched,padded > $OUT/generation.jsonl
cat $OUT/generation.jsonl
echo "=== decode_profile $(date +%T)"
timeout 70 python3 benchmarks/decode_profile.py --backends default --out $OUT/decode.jsonl > /dev/null
cat $OUT/decode.jsonl
echo "=== end $(date +%T)"
