# PENDING (branch fp8-kv, not run yet): the FP8 KV cache (TUNEBENCH_KV_CACHE_DTYPE=fp8) on the H200, bf16 vs FP8
# in one call, ~4-5 min expected (the timeouts cap it at ~7.5 min):
# 1. decode_kernels.py: one layer's Triton decode attention at 256 and 512 ragged rows (100..164 tokens) over a
#    bf16 cache and the same cache in FP8 (ms, TB/s of the bytes each must read, max abs error of the FP8
#    kernel against an fp32 reference over the dequantized FP8 cache and against the bf16 cache's), then the
#    offline burst of 512 requests at 100 in / 64 out, 512 slots, eager decode: tok/s per dtype and how many
#    FP8 greedy completions equal bf16's (identical_to_first / identical_fraction).
# 2. The same burst with compiled layers (TUNEBENCH_DECODE_COMPILE=layers, the served default).
# 3. decode_profile.py: the engine's decode step at 256 and 512 rows (192 tokens per row, and ragged), SDPA and
#    the Triton kernel, eager and compiled layers, kernel tables at 512 rows, once per dtype: where the 17.6 ms
#    step goes with FP8 (the Triton attention was 10.2 ms of it).
# Run from the repository root with .whl carried. Outputs -> $OUT (JSON lines + logs).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, triton, torch; print(torch.__version__, triton.__version__, torch.cuda.get_device_capability())" || exit
echo "[$(date +%T)] attention alone (bf16 vs fp8) and the offline burst, eager"
timeout 150 python3 benchmarks/decode_kernels.py --rows 256,512 --slots 512 --kernels triton --variants lanes:32:2 \
  --kv-dtype auto,fp8 > $OUT/decode_kernels_fp8.jsonl 2> $OUT/decode_kernels_fp8.log
grep "attention alone\|burst\|Error\|error" $OUT/decode_kernels_fp8.log | cut -c1-900
echo "[$(date +%T)] the offline burst, compiled layers"
TUNEBENCH_DECODE_COMPILE=layers timeout 120 python3 benchmarks/decode_kernels.py --skip-alone --slots 512 \
  --kernels triton --variants lanes:32:2 --kv-dtype auto,fp8 > $OUT/decode_kernels_fp8_compiled.jsonl \
  2> $OUT/decode_kernels_fp8_compiled.log
grep "burst\|Error\|error" $OUT/decode_kernels_fp8_compiled.log | cut -c1-600
echo "[$(date +%T)] decode step profile at 256/512 rows, bf16 vs fp8"
timeout 180 python3 benchmarks/decode_profile.py --slots 512 --rows 256,512 --kernel-rows 512 --backends default \
  --compile layers --deadline-s 150 --kv-dtype auto,fp8 --out $OUT/decode_profile_fp8.jsonl \
  > $OUT/decode_profile_fp8.log 2>&1
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("decode_kernels_fp8.jsonl", "decode_kernels_fp8_compiled.jsonl"):
    for line in (out / name).read_text().splitlines() if (out / name).exists() else []:
        data = json.loads(line)
        for rows, entry in data["attention_alone"].items():
            print(name, rows, "rows:", {k: v for k, v in entry.items() if k in ("triton", "triton fp8")})
        for b in data["bursts_100in_64out"]:
            print(name, b["kv_dtype"], b["decode_compile"], b["output_tokens_per_s"], "tok/s, identical to bf16:",
                  b["identical_to_first"], b["identical_fraction"], "fallback:", b["fallback"], b["compile_error"])
path = out / "decode_profile_fp8.jsonl"
for line in path.read_text().splitlines() if path.exists() else []:
    data = json.loads(line)
    print("decode_profile", data["kv_dtype"], data["decode_kernel"], data["step_ms_by_rows"],
          data["bandwidth_bound_ms_by_rows"])
EOF
echo "[$(date +%T)] done"
