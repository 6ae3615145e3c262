# Session 4, first call: where a prefill graph's GPU time goes (eager vs compiled layers), and whether compiled
# prefills slow the one-row decode graph on the GPU (and whether warming decode first changes that).
# Run from the repository root with .whl carried. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
for spec in "0 prefill-first" "1 prefill-first" "1 decode-first"; do
  set -- $spec
  echo "[$(date +%T)] prefill compile $1, $2"
  TORCH_LOGS=recompiles TUNEBENCH_PREFILL_COMPILE=$1 timeout 170 python3 benchmarks/prefill_profile.py --order $2 \
    --out $OUT/prefill-profile.jsonl 2> $OUT/prefill-profile-$1-$2.log | cut -c1-300
  grep -v "Warning\|warn(\|^ *$" $OUT/prefill-profile-$1-$2.log | grep "^\[" | cut -c1-1500
  echo "recompiles: $(grep -c 'Recompiling' $OUT/prefill-profile-$1-$2.log)"
done
echo "[$(date +%T)] done"
