#!/usr/bin/env bash
# The accelerator run of bench.decode: the Llama-3.2-1B and Llama-3.1-8B shapes with random weights in
# bfloat16 (no download), batches 1, 8 and 64, greedy, 256 new tokens; tok/s, compile time, recompilations
# (must be 0), peak device memory against infodec's memory plan, the fraction of the HBM roofline, and
# the two-stream (CFG) and DAEMON (M = 25) ratios. About 8 minutes on one H100/H200, run from anywhere:
#
#   bash bench/gpu_check.sh            # writes to $OUT if set, else bench/results
#
# Per shape: decode_<shape>_bfloat16.{json,md} (written after every configuration, so a timeout keeps
# what finished), decode_<shape>_bfloat16_plan.{json,md} (the dry run) and gpu_check.log (everything).
# Environment, for a quick rehearsal of the script itself (e.g. on CPU):
#   GPU_CHECK_SHAPES="smollm2-135m"         shapes to run (default "llama-3.2-1b llama-3.1-8b")
#   GPU_CHECK_ARGS="--batches=1 --new_tokens=8"  extra bench.decode flags (they come last, so they win)
#   GPU_CHECK_TIMEOUT=225                   seconds per shape's benchmark run
#   GPU_CHECK_ALLOW_CPU=1                   run even when JAX sees no accelerator
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
shapes="${GPU_CHECK_SHAPES:-llama-3.2-1b llama-3.1-8b}"
read -r -a extra <<<"${GPU_CHECK_ARGS:-}"
per_shape="${GPU_CHECK_TIMEOUT:-225}"

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$log"

backend=$(python -c "import jax; print(jax.default_backend())" 2>/dev/null)
if [[ "$backend" == cpu && "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]]; then
  echo "JAX sees no accelerator (backend cpu): install jax[cuda12] or jax[tpu], or set GPU_CHECK_ALLOW_CPU=1" | tee -a "$log"
  exit 2
fi

status=0
for shape in $shapes; do
  common=(--random_model="$shape" --dtype=bfloat16 --batches=1,8,64 --policies=greedy --new_tokens=256
    --out="$out")
  echo "=== $shape: memory plan (nothing allocated)" | tee -a "$log"
  timeout 60 python -m bench.decode "${common[@]}" --dry_run "${extra[@]}" 2>&1 | grep -v '^[IW][0-9]' | tee -a "$log"
  echo "=== $shape: decode, two-stream and DAEMON ratios (timeout ${per_shape} s)" | tee -a "$log"
  timeout "$per_shape" python -m bench.decode "${common[@]}" --repeats=3 "${extra[@]}" 2>&1 \
    | grep -v '^[IW][0-9]' | tee -a "$log"
  code=${PIPESTATUS[0]}
  if [[ $code != 0 ]]; then
    echo "=== $shape: exit status $code (124: timed out; the configurations that finished are in $out)" | tee -a "$log"
    status=1
  fi
done
echo "results in $out: $(cd "$out" && ls decode_*bfloat16* 2>/dev/null | tr '\n' ' ')" | tee -a "$log"
exit $status
