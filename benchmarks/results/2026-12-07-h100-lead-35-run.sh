# Ran on an H100 (2026-12-07 23:51, 341 s; asked for nvidia-h200). Results in 2026-12-07-h100-lead-35-* (the served
# bursts' JSON lines taken from split-fp8w.log: results.jsonl did not come back).
# One call (~7 min), after lead-34 (H100). FP8 weights, rebuilt as a plain module over torch._scaled_mm
# (tunebench.serve.weights.Fp8Linear, TUNEBENCH_WEIGHT_DTYPE=fp8): (1) the 3B's projections alone, bf16 against
# torchao's dynamic FP8 and Fp8Linear, compiled, dynamo's cache limit raised; (2) the offline 512-request burst at
# ratio 0, bf16 then FP8 weights, each log kept whole; (3) if the FP8 burst ran, the served burst through 4 front
# ends with FP8 weights against offline (ratio inf, the served default).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
nofuss() { grep -v "^W1\|register_constant\|^ *\"\"\"Configuration class" ; }
echo "[$(date +%T)] projection matmuls: bf16, torchao, tunebench"
timeout 170 python3 benchmarks/fp8_matmul.py > $OUT/fp8-matmul.jsonl 2> $OUT/fp8-matmul.log
echo "rc=$?"; nofuss < $OUT/fp8-matmul.log | grep "@\|Error\|error" | tail -16 | cut -c1-300
for w in auto fp8; do
  echo "[$(date +%T)] offline burst, ratio 0, weights $w"
  TUNEBENCH_WEIGHT_DTYPE=$w timeout 150 python3 benchmarks/burst_timeline.py --waiting-served-ratio 0 --repeats 3 \
    --out $OUT/timeline-$w.jsonl > $OUT/timeline-$w.log 2>&1
  echo "rc=$?"; grep -i "error\|Traceback\|FP8 weights\|slots x" $OUT/timeline-$w.log | nofuss | head -8 | cut -c1-300
  tail -c 900 $OUT/timeline-$w.jsonl 2>/dev/null; echo
done
[ -s $OUT/timeline-fp8.jsonl ] || { echo "no FP8 burst: served part skipped"; tail -40 $OUT/timeline-fp8.log | cut -c1-300; exit 0; }
echo "[$(date +%T)] served bursts with FP8 weights, 4 front ends, ratio inf, against offline"
TUNEBENCH_WEIGHT_DTYPE=fp8 timeout -s INT 170 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
  --repeat 3 --frontends split:4 --out $OUT/split-fp8w > $OUT/split-fp8w.log 2>&1
echo "rc=$?"; quiet < $OUT/split-fp8w.log | nofuss | tail -3 | cut -c1-1500
echo "[$(date +%T)] done"
