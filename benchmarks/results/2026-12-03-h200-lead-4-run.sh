# The lead's second call of 2026-12-03 (session 2), on main with the start-up warm-up (every decode bucket's
# graph and the compiled prefill path before the server is ready) and compiled prefill graphs by default:
# where a 512-row step's time goes (eager vs compiled layers), the offline burst under compiled layers, the
# full serving benchmark (512 slots, 512-request bursts, open-loop rates), and the single stream with SDPA
# instead of the Triton kernel at one row. Run from the repository root with .whl carried. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, httptools, uvloop, triton" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] decode step profile at 512 rows"
timeout 120 python3 benchmarks/decode_profile.py --slots 512 --rows 1,256,512 --kernel-rows 512 --backends default \
  --compile off,layers --deadline-s 70 --out $OUT/decode_profile.jsonl > $OUT/decode_profile.log 2>&1
tail -c 1500 $OUT/decode_profile.jsonl; echo
echo "[$(date +%T)] offline burst, compiled layers"
TUNEBENCH_DECODE_COMPILE=layers timeout 80 python3 benchmarks/decode_kernels.py --rows 512 --slots 512 \
  --variants lanes:32:2 > $OUT/decode_kernels_compiled.jsonl 2> $OUT/decode_kernels_compiled.log
grep "burst" $OUT/decode_kernels_compiled.log
echo "[$(date +%T)] serving benchmark"
timeout -s INT 290 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=250,275,300;classify-100in-16out=450,525,600' --budget-s 270 --out $OUT/serve 2>&1 | quiet | tail -12
grep "warm-up\|ready in" $OUT/serve/engine_profile.log $OUT/serve/*.log 2>/dev/null | head -4
echo "[$(date +%T)] single stream, SDPA at one row"
TUNEBENCH_FLEX_MIN_ROWS=2 timeout 75 python3 benchmarks/serve_throughput.py --single-stream-only --slots 512 \
  --out $OUT/single-sdpa 2>&1 | quiet | tail -2
echo "[$(date +%T)] done"
