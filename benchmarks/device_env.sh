# Sourced by the device-call scripts (benchmarks/results/*-run.sh) from the repository root, with .whl carried:
# installs the carried wheels where the GPU host's Python finds them, puts src/ and benchmarks/ on the path, fails
# fast on a missing module, and defines `quiet` (drops warnings and per-graph noise from a benchmark's log).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic, aiohttp" || return 1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
