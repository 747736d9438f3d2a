#!/usr/bin/env bash
# Run the GPU checks on the lent NVIDIA machine, from the repo root, with `carry: [".gpu"]`.
#
#   bash tests/gpu/run_on_device.sh          # pytest tests/gpu (the engine-level GPU test)
#   bash tests/gpu/run_on_device.sh smoke    # tests/gpu/device_smoke.py (bundle + hook only)
#   bash tests/gpu/run_on_device.sh bench    # bench/engine_vs_criu.py on that machine
#   bash tests/gpu/run_on_device.sh all      # the GPU tests, then the benchmark
#
# The machine has no network, no CRIU and no Jupyter stack: .gpu/ (tests/gpu/prepare_device_bundle.sh)
# brings them. Everything is teed to $OUT/gpu-test.log; timings land in $OUT/*.json.
set -uo pipefail

mode="${1:-tests}"
timeout_s="${GPU_TEST_TIMEOUT:-480}"
root="$(pwd)"
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-test.log") 2>&1

py="${PYTHON:-python3}"
[ -d .gpu/whl ] && [ -x .gpu/criu/criu ] || { echo "no .gpu bundle: run tests/gpu/prepare_device_bundle.sh and carry .gpu"; exit 2; }

echo "== host"; uname -r; id -u; "$py" --version
echo "== nvidia-smi"; nvidia-smi || echo "nvidia-smi failed"
ls -l /dev/nvidia* 2>&1 | head -20
cat /proc/driver/nvidia/version 2>&1 | head -2

echo "== wheels"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH="/tmp/site:$root/app${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$root/.gpu/criu:/tmp/site/bin:$PATH"
export JUSNAP_CRIU="$root/.gpu/criu/criu"
export JUSNAP_GPU_REPORT="${JUSNAP_GPU_REPORT:-$OUT/gpu-timings.json}"
export PYTHONUNBUFFERED=1

echo "== criu"; criu --version; criu check; echo "criu check rc=$?"

case "$mode" in
  smoke)
    timeout -k 10 "$timeout_s" "$py" tests/gpu/device_smoke.py
    rc=$?
    ;;
  bench)
    # bench/engine_vs_criu.py on this machine (kernels as root, CRIU privileged).
    timeout -k 10 "$timeout_s" "$py" bench/engine_vs_criu.py --user root --criu "$JUSNAP_CRIU" \
      --sizes "${BENCH_SIZES:-100M,1G,4G}" --repeat "${BENCH_REPEAT:-3}" --out "$OUT/engine_vs_criu.json"
    rc=$?
    ;;
  all)
    timeout -k 10 "$timeout_s" "$py" -m pytest tests/gpu -v -s -ra -p no:cacheprovider
    rc=$?
    timeout -k 10 "${BENCH_TIMEOUT:-240}" "$py" bench/engine_vs_criu.py --user root --criu "$JUSNAP_CRIU" \
      --sizes "${BENCH_SIZES:-100M,1G,4G}" --repeat "${BENCH_REPEAT:-3}" --out "$OUT/engine_vs_criu.json"
    brc=$?
    echo "== bench exit $brc"
    [ "$rc" -eq 0 ] && rc=$brc
    ;;
  *)
    timeout -k 10 "$timeout_s" "$py" -m pytest tests/gpu -v -s -ra -p no:cacheprovider "${@:2}"
    rc=$?
    ;;
esac
echo "== exit $rc"
ls -la "$OUT"
exit "$rc"
