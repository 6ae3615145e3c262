# Session 6, second call: the offline burst's timeline after this session's engine changes (heap frozen during
# offline runs, compaction by direct per-row copies, prefills over their fresh keys, no prompt tensor per
# admitted request, compiled prefills with unmerged adapters), against the whole-heap collections of before
# (--gc-freeze off) in the same call; then LoRA merged and unmerged. Each run a fresh process; .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
summary() { python3 -c "
import json,sys
for l in sys.stdin:
    if not l.startswith('{'): continue
    d=json.loads(l); t=d['timeline']; b=d['step_breakdown']
    print(d['adapter'], 'gc', d['gc_freeze'], d['env'], 'tok/s', d['output_tokens_per_s'], 'walls', d['walls_s'], 'profiled', d['profiled_wall_s'], 'warm', d['load_and_warmup_s'], 'gc', d['gc_during_bursts'])
    print('  steps', b['steps'], 'rows', b['rows_per_step'], 'wait', b['gpu_wait_ms_per_step'], 'launch', b['launch_ms_per_step'], 'tokens', b['tokens_streaming_ms_per_step'], 'sched', b['scheduling_ms_per_step'], 'prefill', b['prefill_ms_each'], b['prefills'])
    print('  busy', t['gpu_busy_ms'], 'idle', t['gpu_idle_ms'], 'share', t['gpu_busy_share'], 'tail', t['idle_after_last_kernel_ms'], 'gaps', t['idle_gaps'], t['idle_in_gaps_ms'])
    print('  by launch', t['kernel_ms_by_launching_phase'])
    print('  idle by host', t['idle_ms_by_host_phase'])
    print('  largest', t['largest_gaps'][:5])
"; }
run() { echo "[$(date +%T)] $*"; env "$@" 2>$OUT/stderr-$RANDOM.log | tee -a $OUT/timeline.jsonl | summary; }
run timeout 150 python3 benchmarks/burst_timeline.py --repeats 4
run timeout 150 python3 benchmarks/burst_timeline.py --repeats 4 --gc-freeze off
run timeout 150 python3 benchmarks/burst_timeline.py --adapter merged
run timeout 170 python3 benchmarks/burst_timeline.py --adapter unmerged
echo "[$(date +%T)] done"
