#!/usr/bin/env bash
# The one prepared run for a CUDA machine (DEVELOPERS.md: "run one prepared script there").
#
#   bash benchmarks/device_check.sh [OUT_DIR]
#
# 1. `harness selftest --device cuda` (every task x method on tiny settings);
# 2. the CUDA tests (tests/test_device.py, tests/test_selftest.py): CUDA cell vs CPU cell within the
#    metrics' tolerances, a CUDA cell repeated bit for bit, the HF adapter of every family on the device;
# 3. the quick suite on CUDA from a cold cache, with its wall time (README), then `harness check` against
#    the committed CPU reference (device differences are reported as such, see README "Results from
#    another device"), and the largest CUDA-vs-CPU difference per metric, to write the reference's
#    `device_tolerance` section from;
# 4. the GPU in-context learners (issue 16: mean SPD to OLS < 0.01 at d = 5) trained on CUDA into
#    OUT_DIR/models/<name> (`harness models build`), their cards' SPD per k printed; commit those
#    directories under harness/embedded/weights/ (`harness models check` then verifies their cards on a CPU).
# DEVICE_CHECK_ONLY=learners runs step 4 alone.
# Offline machines: if a folder `wheels/` is next to this checkout (pip download -d wheels ...), missing
# packages are installed from it without the network. Everything is written under OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/device-check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $*" | tee -a "$out/summary.txt"; }

if [ -d wheels ]; then
  python -m pip install --quiet --no-index --find-links wheels -e . >"$out/pip.txt" 2>&1 || true
fi
python - <<'EOF' | tee -a "$out/summary.txt"
import importlib, torch
missing = [m for m in ("numpy", "scipy", "sklearn", "safetensors", "matplotlib", "transformers", "tokenizers")
           if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "missing:", missing or "none")
EOF

if [ "${DEVICE_CHECK_ONLY:-}" != learners ]; then
log "selftest --device cuda"
start=$(date +%s)
python -m harness selftest --device cuda 2>&1 | tee "$out/selftest.txt"
log "selftest: $(( $(date +%s) - start )) s, exit ${PIPESTATUS[0]}"

log "CUDA tests"
python -m pytest -q -p no:cacheprovider -rs tests/test_device.py tests/test_selftest.py 2>&1 | tail -n 30 | tee "$out/pytest.txt"

log "quick suite on cuda, cold cache"
export HARNESS_CACHE="$out/cache"
start=$(date +%s)
python -m harness run --suite quick --device cuda --results-dir "$out/results" --no-progress >"$out/run.txt" 2>&1
status=$?
tail -n 5 "$out/run.txt" | tee -a "$out/summary.txt"
log "quick suite on cuda: $(( $(date +%s) - start )) s, exit $status"

log "harness check against results/reference.json (CPU)"
python -m harness check --reference results/reference.json --results-dir "$out/results" 2>&1 | tee "$out/check.txt" | tail -n 40
python - "$out/results" <<'EOF' | tee "$out/cuda-vs-cpu.txt"
# Largest |CUDA - CPU reference| per metric over the quick suite, for the reference's device_tolerance.
import json, sys
from collections import defaultdict
from harness.core.records import Store
ref = json.load(open("results/reference.json"))
entries = {(e["task"], e["method"], e["model"]): e for e in ref.get("entries", [])
           if isinstance(e, dict) and not e.get("method_params")}
worst = defaultdict(float)
for r in Store(sys.argv[1]).load_all():
    e = entries.get((r["task"], r["method"], r["model"]))
    if e is None or r.get("method_params"):
        continue
    for m, v in (r.get("metrics") or {}).items():
        if isinstance(e["metrics"].get(m), dict):
            worst[m] = max(worst[m], abs(v - e["metrics"][m]["value"]))
for m, d in sorted(worst.items(), key=lambda kv: -kv[1]):
    print(f"{m:40s} {d:.3g}")
EOF
fi

log "GPU in-context learners (harness models build on cuda)"
for name in icl-d5-gpu icl-d8-noisy-gpu; do
  start=$(date +%s)
  python -m harness models build --name "$name" --out "$out/models" --force 2>&1 | tail -n 3 | tee -a "$out/summary.txt"
  python - "$out/models/$name" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
card = json.load(open(sys.argv[1] + "/icl.json"))["card"]
spd = card["spd_to_bayes_per_k"]
print(card["name"], "trained on", card["trained_on"], "in", card["training_seconds"], "s; SPD per k:",
      " ".join(f"{v:.4f}" for v in spd), "; mean over k >= 1:", round(sum(spd[1:]) / (len(spd) - 1), 4))
EOF
  log "$name: $(( $(date +%s) - start )) s"
done
