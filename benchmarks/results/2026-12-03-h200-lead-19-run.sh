# Session 5, fourth call: where the unmerged LoRA burst's 20 ms of host time per step goes (lead-18: "tokens/
# streaming" 20.1 ms per step unmerged, 7.5 merged): the measured 512-request burst under cProfile, top functions
# by own time; then prefill_profile's graph timings with the split:16:1 decode kernel. Run with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
echo "[$(date +%T)] LoRA unmerged burst under cProfile"
timeout 220 python3 - > $OUT/lora-profile.log 2>&1 <<'PY'
import cProfile, pstats, tempfile, time, torch
from pathlib import Path
from serve_throughput import build_tokenizer, prompt_texts
from engine_checks import make_adapter
from tunebench.serve.engine import EngineLimits, GenerationRequest, create_engine
from tunebench.serve.loading import load_served
from tunebench.serve.metrics import ServeMetrics
from tunebench.serve.offline import run_offline
from tunebench.serve.options import AdapterSpec, ModelOptions
from tunebench.serve.sampling import SamplingParams
from engine_checks import step_breakdown
work = Path(tempfile.mkdtemp())
tok = build_tokenizer(work / "tok"); texts = prompt_texts(tok)
adapter = make_adapter("redpajama-3b", work / "lora")
served = load_served(ModelOptions(model="redpajama-3b", random_weights=True, tokenizer=str(work / "tok"), device="cuda",
                                  adapters=(AdapterSpec("lora", adapter),)))
engine = create_engine("batched", served, EngineLimits(max_batch=512, max_queue=2048, request_timeout=60,
                                                       max_sequence_tokens=256), ServeMetrics("batched"))
prompts = [served.tokenizer(t)["input_ids"][:128] for t in texts]
reqs = lambda n: [GenerationRequest(prompts[i % len(prompts)], SamplingParams(max_new_tokens=n, ignore_eos=True), "lora") for i in range(512)]
run_offline(engine, reqs(8))
for name in ("plain", "profiled"):
    prof = cProfile.Profile() if name == "profiled" else None
    started = time.monotonic()
    if prof: prof.enable()
    run_offline(engine, reqs(64)); torch.cuda.synchronize()
    if prof: prof.disable()
    print(name, round(time.monotonic() - started, 3), "s", step_breakdown(engine), flush=True)
pstats.Stats(prof).sort_stats("tottime").print_stats(30)
PY
grep -v "Warning\|warn(" $OUT/lora-profile.log | grep -A45 "^plain" | cut -c1-220
echo "[$(date +%T)] prefill profile, split:16:1"
TUNEBENCH_TRITON_DECODE=split:16:1 timeout 170 python3 benchmarks/prefill_profile.py --no-kernels --out $OUT/prefill-profile.jsonl 2>&1 | grep "ms:" | cut -c1-300
echo "[$(date +%T)] done"
