#!/bin/bash
# engine-speed device call (issue 20, per-step overhead): decode steps eager vs torch.compile'd, kernel tables at
# 1 and 256 rows, the served single stream compiled and eager. Run from /work/main as bash .dev/engine-speed/run.sh
set -o pipefail
cd .dev/engine-speed
python3 -c "import tunebench.cli, fastapi, uvicorn" || exit 3
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
T0=$(date +%s)
echo "=== decode_profile off+layers $(date +%T)"
timeout 85 python3 benchmarks/decode_profile.py --backends default --kernel-rows 1,256 --compile layers \
  --out $OUT/decode.jsonl > /dev/null 2> $OUT/decode.err; echo "rc=$? at $(( $(date +%s) - T0 )) s"
grep -v "Warn\|warn" $OUT/decode.err | tail -n 8 | cut -c1-600
for mode in layers off; do
  echo "=== served single stream TUNEBENCH_DECODE_COMPILE=$mode $(date +%T)"
  lim=$([ $mode = layers ] && echo 90 || echo 50)
  TUNEBENCH_DECODE_COMPILE=$mode timeout $lim python3 benchmarks/serve_throughput.py --single-stream-only \
    --warmup 1 --out $OUT/serve-$mode > $OUT/serve-$mode.log 2>&1; echo "rc=$? at $(( $(date +%s) - T0 )) s"
  grep -h 'single-stream' $OUT/serve-$mode/results.jsonl
  grep -h "compiled decode\|unavailable" $OUT/serve-$mode/engine_profile.log | tail -n 4 | cut -c1-300
  { echo "=== $mode"; cat $OUT/serve-$mode/results.jsonl $OUT/serve-$mode/engine_profile.log;
    grep -v "Warn\|warn" $OUT/serve-$mode.log | tail -n 30; } >> $OUT/serve.txt
  rm -rf $OUT/serve-$mode $OUT/serve-$mode.log
done
left=$(( 285 - ($(date +%s) - T0) ))
echo "=== decode_profile model, ${left} s left $(date +%T)"
[ $left -gt 30 ] && timeout $left python3 benchmarks/decode_profile.py --backends default --rows 1,256 \
  --kernel-rows 1 --compile model --out $OUT/decode-model.jsonl > /dev/null 2> $OUT/decode-model.err
echo "rc=$? at $(( $(date +%s) - T0 )) s"
grep -v "Warn\|warn" $OUT/decode-model.err | tail -n 5 | cut -c1-600
