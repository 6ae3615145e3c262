# Ran on an H100 (2026-12-07; asked for nvidia-h200): results in 2026-12-07-h100-lead-32-*. It ran with deferred
# captures built in the working tree (not committed: they measured no faster, see the README, lead-29..32), so
# TUNEBENCH_PREFILL_CAPTURE below does nothing in the committed code.
# One call (~4 min), after lead-31: deferred prefill captures (graphs.CAPTURE_AFTER, TUNEBENCH_PREFILL_CAPTURE).
# lead-29's served bursts captured prefill graphs of new shapes (rows x 104 columns) inside measured bursts, most at
# waiting-served ratio 0. The served 512-request burst through 4 front ends at ratios inf and 0, with captures
# deferred to idle moments (that build's default) and, in the same call, at once (before).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
for mode in idle now; do
  echo "[$(date +%T)] TUNEBENCH_PREFILL_CAPTURE=$mode: served bursts, 4 front ends, ratios inf and 0; offline"
  TUNEBENCH_PREFILL_CAPTURE=$mode timeout -s INT 200 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
    --repeat 3 --frontends split:4,split:4~0 --out $OUT/split-$mode 2>&1 | quiet | tail -3 | cut -c1-1500
  grep "captured a prefill\|profile:" $OUT/split-$mode/engine_profile.log | sed 's/.*(engine process): //' \
    | cut -c1-160 | tail -24
done
echo "[$(date +%T)] done"
