# Ran on an H100 (2026-12-07 17:41, 280 s; asked for nvidia-h200). Results in 2026-12-07-h100-lead-34-*. It ran with
# an FP8-weights build of the engine in the working tree (TUNEBENCH_WEIGHT_DTYPE, torchao; not committed: its burst
# failed, see benchmarks/RESULTS.md, lead-34), so TUNEBENCH_WEIGHT_DTYPE below does nothing in the committed code.
# An earlier try of this call (17:07, same card) measured the bf16 burst at 22,792 tok/s and failed in cuBLASLt
# inside the FP8 layers' biased _scaled_mm; the build then moved biases after the matmul, as fp8_matmul.py does.
# One call (~6 min), after lead-33 (H100). FP8 weights (TUNEBENCH_WEIGHT_DTYPE=fp8, torchao, new): (0) torch's
# row-wise scaled matmul with and without a bias (the first try of this call failed in cuBLASLt with one);
# (1) the 3B's projection matmuls alone, bf16 against FP8, at 1 / 512 / 6656 rows; (2) the offline 512-request
# burst at ratio 0, bf16 then FP8 weights; (3) the served burst through 4 front ends with FP8 weights against
# offline (ratio inf, the served default).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
nofuss() { grep -v "^W1\|register_constant\|^ *\"\"\"Configuration class" ; }
python3 - <<'PY' 2>&1 | tail -6
import torch
for rows in (1, 512):
    for bias in (False, True):
        a = torch.randn(rows, 2560, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(7680, 2560, device="cuda").to(torch.float8_e4m3fn).t()
        sa, sb = torch.ones(rows, 1, device="cuda"), torch.ones(1, 7680, device="cuda")
        extra = {"bias": torch.zeros(7680, device="cuda", dtype=torch.bfloat16)} if bias else {}
        try:
            torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, **extra)
            print(f"_scaled_mm row-wise, {rows} rows, bias {bias}: ok")
        except Exception as err:
            print(f"_scaled_mm row-wise, {rows} rows, bias {bias}: {type(err).__name__}: {str(err)[:90]}")
PY
echo "[$(date +%T)] projection matmuls, bf16 vs FP8"
timeout 120 python3 benchmarks/fp8_matmul.py > $OUT/fp8-matmul.jsonl 2> $OUT/fp8-matmul.log
echo "rc=$?"; nofuss < $OUT/fp8-matmul.log | grep -v "^ " | tail -13 | cut -c1-240
for w in auto fp8; do
  echo "[$(date +%T)] offline burst, ratio 0, weights $w"
  TUNEBENCH_WEIGHT_DTYPE=$w timeout 120 python3 benchmarks/burst_timeline.py --waiting-served-ratio 0 --repeats 3 \
    --out $OUT/timeline-$w.jsonl 2>&1 | quiet | nofuss | tail -2 | cut -c1-1200
done
[ -s $OUT/timeline-fp8.jsonl ] || { echo "no FP8 burst: served part skipped"; exit 0; }
echo "[$(date +%T)] served bursts with FP8 weights, 4 front ends, ratio inf, against offline"
TUNEBENCH_WEIGHT_DTYPE=fp8 timeout -s INT 200 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
  --repeat 3 --frontends split:4 --out $OUT/split-fp8w 2>&1 | quiet | nofuss | tail -3 | cut -c1-1500
echo "[$(date +%T)] done"
