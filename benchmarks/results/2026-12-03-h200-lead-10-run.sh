# The lead's third call of 2026-12-03 (session 3), on main with the FP8 KV cache merged and one SO_REUSEPORT
# socket per front end: (1) the Triton decode kernel and the offline 512-request burst over a bf16 vs an FP8
# cache (the FP8 branch's device script's first step); (2) the serving benchmark's bursts and rates with 8 front ends,
# bf16 cache; (3) the same with TUNEBENCH_KV_CACHE_DTYPE=fp8. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, httptools, uvloop, triton, prometheus_client.multiprocess" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
echo "[$(date +%T)] attention alone (bf16 vs fp8) and the offline burst, eager"
timeout 150 python3 benchmarks/decode_kernels.py --rows 256,512 --slots 512 --kernels triton --variants lanes:32:2 \
  --kv-dtype auto,fp8 > $OUT/decode_kernels_fp8.jsonl 2> $OUT/decode_kernels_fp8.log
grep "attention alone\|burst\|Error\|error" $OUT/decode_kernels_fp8.log | cut -c1-900
for dtype in auto fp8; do
  echo "[$(date +%T)] served, 8 front ends, KV cache $dtype"
  TUNEBENCH_KV_CACHE_DTYPE=$dtype timeout -s INT 135 python3 benchmarks/serve_throughput.py --offline --served-only \
    --skip-single --slots 512 --burst 512 --warmup 2 --frontends 8 \
    --rates '100in-64out=300,330;classify-100in-16out=540,600' --budget-s 120 --out $OUT/serve-8-$dtype 2>&1 \
    | quiet | grep "burst:\|\"rates\"" | sed 's/"cpu_cores_busy": {[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}[^}]*}//g' | cut -c1-1200
done
echo "[$(date +%T)] done"
