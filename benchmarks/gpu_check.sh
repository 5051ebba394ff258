#!/usr/bin/env bash
# The GPU check (issue 17) as one command of at most 9 minutes on a machine with one CUDA GPU:
#
#   1. the CUDA unit tests (pytest -m cuda tests/test_cuda.py)            -> cuda_tests.xml
#   2. benchmarks/bench_loss.py --device cuda                               -> bench_loss.json
#   3. benchmarks/bench_train.py, GPU section (resnet50, 112 px, batch 128,
#      bf16, channels_last, eager and torch.compile, timm bare fwd+bwd)     -> bench_train.json
#   4. as much of the FaceParts full grid as the time left allows
#      (python -m ecl reproduce --profile full --studies faceparts, one run
#      per method and seed: seed 0 baseline, ecloss, icnn, sad, then seed 1 ...) -> reproduce.json,
#                                                              faceparts_full_results.tar.gz
#   and, after every part, summary.json (environment, status of every part, the aims) and
#   gpu_check.log (everything printed). Seven files, no sub-folders (the device tool returns at most 8).
#
# Usage:
#   bash benchmarks/gpu_check.sh                       # writes into $OUT
#   bash benchmarks/gpu_check.sh --out DIR             # ... or into DIR (wins over $OUT)
#   bash benchmarks/gpu_check.sh --dry-run --out DIR   # CPU plumbing check, tiny sizes, about 3 minutes
#
# Options:
#   --budget SECONDS  total wall time (default 540; 150 with --dry-run). No new grid run starts when
#                     less is left than the last finished run took; a run under way is stopped with
#                     SIGINT when the time is up (it leaves a resumable checkpoint in the runs folder).
#   --work DIR        run folders, grid results, pytest's temporary files (default /tmp/ecl_gpu_check,
#                     kept, so a second call on the same machine reuses finished runs; with --dry-run a
#                     fresh temporary folder, removed at the end)
#   --python PY       interpreter (default: $PYTHON, else the repository's .venv, else python3)
#   --methods M ...   grid methods (default: baseline ecloss icnn sad)
#   --seeds S ...     grid seeds (default: 0 1 2)
#   --skip PART ...   skip parts: tests bench_loss bench_train reproduce
#
# Nothing is downloaded: a missing Python package is named (with the part that needs it) and that part
# is skipped. See benchmarks/README.md.

set -u -o pipefail

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

OUT_DIR="" DRY=0 BUDGET="" WORK="" PY="${PYTHON:-}"
METHODS=(baseline ecloss icnn sad)
SEEDS=(0 1 2)
SKIP=" "
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --dry-run) DRY=1; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
        --work) WORK=${2:?--work needs a folder}; shift 2 ;;
        --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
        --methods | --seeds | --skip)
            option=$1; values=(); shift
            while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do values+=("$1"); shift; done
            [ ${#values[@]} -gt 0 ] || { echo "error: $option needs values" >&2; exit 2; }
            case "$option" in
                --methods) METHODS=("${values[@]}") ;;
                --seeds) SEEDS=("${values[@]}") ;;
                --skip) SKIP="$SKIP${values[*]} " ;;
            esac ;;
        -h | --help) usage; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT_DIR=${OUT_DIR:-${OUT:-}}
if [ -z "$OUT_DIR" ]; then
    echo "error: no output folder: set OUT or pass --out DIR" >&2
    exit 2
fi
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
if [ -z "$PY" ]; then
    for candidate in "$REPO/.venv/bin/python" python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then PY=$(command -v "$candidate"); break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "error: no Python interpreter found (pass --python)" >&2
    exit 2
fi
if [ "$DRY" = 1 ]; then
    BUDGET=${BUDGET:-150}
    REMOVE_WORK=0
    if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/ecl_gpu_dry.XXXXXX") && REMOVE_WORK=1; fi
else
    BUDGET=${BUDGET:-540}
    REMOVE_WORK=0
    WORK=${WORK:-${TMPDIR:-/tmp}/ecl_gpu_check}
fi
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || exit 2
RESERVE=15       # seconds kept for the summary at the end
RESULTS="$WORK/results"
RUNS="$WORK/runs"
mkdir -p "$RESULTS" "$RUNS" "$WORK/pytest"
rm -f "$WORK/parts.jsonl" "$WORK/reproduce_runs.jsonl" "$WORK/reproduce_state.json"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .` too
if [ "$DRY" = 1 ]; then
    export ECL_CACHE="$WORK/cache"   # a fresh FaceParts cache: the dry run renders its tiny sets itself
    export CUDA_VISIBLE_DEVICES=""   # the CPU even where a GPU is: tiny sizes, the CUDA parts skipped
fi

# This call's records only (a reused --out folder keeps no stale ones).
for name in summary.json gpu_check.log cuda_tests.xml bench_loss.json bench_train.json reproduce.json \
    faceparts_full_results.tar.gz; do
    rm -f "$OUT_DIR/$name" "$OUT_DIR/$name.tmp"
done
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
exec 3>&1 4>&2
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

say() { printf '\n[gpu_check %4ds] %s\n' "$SECONDS" "$*"; }
time_left() { echo $((BUDGET - SECONDS - RESERVE)); }
skipped_by_user() { [ "${SKIP#* $1 }" != "$SKIP" ]; }

FAILURES=0
# record PART STATUS SECONDS [DETAIL]: one JSON line in $WORK/parts.jsonl; counts failures: a failed part,
# a dry run's failed plumbing (its detail ends in ": failed ..."), a part skipped for a missing package
record() {
    case "$2 ${4:-}" in
        failed* | *": failed"* | "skipped: missing"* | "skipped: the ecl"* | "skipped: import"*)
            FAILURES=$((FAILURES + 1)) ;;
    esac
    "$PY" -c 'import json, sys
part, status, seconds, detail = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps({"part": part, "status": status, "seconds": seconds, "detail": detail}) + "\n")
' "$WORK/parts.jsonl" "$1" "$2" "$3" "${4:-}"
    say "$1: $2${4:+ ($4)}"
}

# bounded SECONDS CMD...: run CMD with at most SECONDS of wall time (SIGINT, then SIGKILL 20 s later)
bounded() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout -s INT -k 20 "$seconds" "$@"
    else
        "$@"
    fi
}

# cap SECONDS: SECONDS, or the time left if that is less
cap() {
    local left
    left=$(time_left)
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

write_summary() {
    "$PY" - "$WORK" "$OUT_DIR" "$DRY" "$BUDGET" "$SECONDS" <<'PYEOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, out, dry, budget, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:]


def read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


parts = {}
if (work / "parts.jsonl").is_file():
    for line in (work / "parts.jsonl").read_text().splitlines():
        row = json.loads(line)
        parts[row.pop("part")] = row
summary = {
    "script": "benchmarks/gpu_check.sh",
    "dry_run": dry,
    "budget_s": int(budget),
    "elapsed_s": int(elapsed),
    "env": read(work / "env.json"),
    "parts": parts,
}
junit = out / "cuda_tests.xml"
if junit.is_file():
    try:
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        failed = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
        summary["cuda_tests"] = {**counts, "properties": props, "failed": failed}
    except (ET.ParseError, AttributeError) as err:
        summary["cuda_tests"] = {"error": f"unreadable JUnit XML: {err}"}
aims = {}
loss = read(out / "bench_loss.json")
if loss and "step" in loss:
    step = loss["step"]
    aims["bench_loss_ecloss_overhead"] = {
        "value": step["ratio_median_of_pairs"],
        "aim": f"<= {step['goal']}",
        "met": step["goal_met"],
        "device": loss["env"]["device_name"],
    }
train = read(out / "bench_train.json")
if train and isinstance(train.get("gpu"), dict):
    gpu = train["gpu"]
    for name, aim in gpu.get("aims", {}).items():
        aims[f"bench_train_{name}"] = aim
    for key in ("compile_speedup",):
        if key in gpu:
            summary[key] = gpu[key]
    summary["peak_memory_bytes"] = {
        mode: gpu[mode].get("peak_memory_bytes")
        for mode in ("eager", "compile", "bare")
        if isinstance(gpu.get(mode), dict) and "peak_memory_bytes" in gpu[mode]
    }
grid = read(out / "reproduce.json")
if grid:
    trained = [r for r in grid["runs"] if r["status"].startswith("ok")]
    summary["grid"] = {k: grid[k] for k in ("completed", "planned", "stopped", "estimate_s") if k in grid}
    if trained:
        mean = sum(r["seconds"] for r in trained) / len(trained)
        aims["faceparts_full_grid_15_runs_within_600_s"] = {
            "value": round(15 * mean, 1),
            "aim": "<= 600",
            "met": 15 * mean <= 600,
            "note": f"projected from the mean of {len(trained)} runs trained here ({mean:.1f} s a run, "
            "data rendering and evaluation included); the grid's 5 methods include ecloss-tuned",
        }
summary["aims"] = aims
if dry:
    summary["aims_note"] = "dry run: the CPU with tiny sizes; these numbers check the plumbing, they measure nothing"
summary["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
tmp = out / "summary.json.tmp"
tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
tmp.replace(out / "summary.json")
PYEOF
}

finish() {
    local status=$?
    trap - EXIT INT TERM
    say "writing $OUT_DIR/summary.json"
    write_summary || echo "warning: summary.json could not be written"
    if [ -f "$OUT_DIR/summary.json" ]; then
        "$PY" -c 'import json, sys
s = json.load(open(sys.argv[1]))
for name, part in s["parts"].items():
    print("  %-12s %s  (%.0f s)%s" % (name, part["status"], part["seconds"],
                                       "  " + part["detail"] if part["detail"] else ""))
for name, aim in s["aims"].items():
    print("  aim %s: %.3f (%s): %s" % (name, aim["value"], aim["aim"], "met" if aim.get("met") else "NOT met"))
' "$OUT_DIR/summary.json" || true
    fi
    say "done in ${SECONDS} s (budget ${BUDGET} s); files in $OUT_DIR: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
    if [ "$REMOVE_WORK" = 1 ]; then rm -rf "$WORK"; fi
    exec 1>&3 2>&4 3>&- 4>&-
    wait "$TEE_PID" 2>/dev/null || true
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

say "gpu_check: repo $REPO, out $OUT_DIR, work $WORK, budget ${BUDGET} s, dry run $DRY, python $PY"

# ------------------------------------------------------------------------ 0. environment, packages
start=$SECONDS
"$PY" - "$WORK" <<'PYEOF'
import importlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

work = Path(sys.argv[1])
PIP_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn"}
# What each part imports (ecl's own modules pull in the rest: numpy, PIL, yaml, scipy via sklearn ...).
PARTS = {
    "tests": ["torch", "pytest", "numpy", "yaml", "PIL", "safetensors.torch", "timm", "ecl.losses",
              "ecl.config", "ecl.models", "ecl.optim", "ecl.train", "ecl.checkpoint"],
    "bench_loss": ["torch", "numpy", "timm", "ecl.losses", "ecl.models"],
    "bench_train": ["torch", "numpy", "yaml", "PIL", "timm", "ecl.config", "ecl.models", "ecl.train"],
    "reproduce": ["torch", "numpy", "yaml", "PIL", "sklearn", "safetensors.torch", "timm", "ecl.cli",
                  "ecl.reproduce", "ecl.evaluate", "ecl.train", "ecl.checkpoint", "ecl.results",
                  "ecl.metrics", "ecl.attribution", "ecl.studies", "ecl.data"],
}
env = {"python": platform.python_version(), "executable": sys.executable, "cpu_count": os.cpu_count()}
versions = {}
for dist in ("torch", "torchvision", "timm", "safetensors", "scikit-learn", "scipy", "numpy", "pyyaml",
             "pillow", "tqdm", "pandas", "plotly", "ipywidgets", "pytest", "ecl"):
    try:
        versions[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        versions[dist] = None
env["versions"] = versions
try:
    import torch

    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            device_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
except Exception as err:  # torch itself is broken: every part will say so below
    env["torch_error"] = f"{type(err).__name__}: {err}"
    env["cuda_available"] = False
ready, problems = {}, {}
for part, modules in PARTS.items():
    missing, broken = {}, []  # missing: top-level module -> the imports that need it
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            missing.setdefault((err.name or name).split(".")[0], []).append(name)
        except Exception as err:  # an installed package that fails to import
            broken.append(f"import {name} failed: {type(err).__name__}: {err}")
    found = []
    for top, needers in missing.items():
        if top == "ecl":
            found.append("the ecl package itself is not importable: run `pip install --no-deps "
                         "--no-build-isolation -e .` in the repository")
        else:
            found.append(f"missing Python package '{PIP_NAMES.get(top, top)}' (import {top}; needed by "
                         f"{', '.join(needers)})")
    found += broken
    ready[part] = not found
    problems[part] = found
    (work / f"ready.{part}").write_text("ok" if not found else "; ".join(found))
    for line in found:
        print(f"part {part}: {line}. This machine has no network: bring it as a wheel "
              "(pip install --no-index --no-deps WHEEL) and run again; the part is skipped.")
try:
    import ecl

    env["ecl_file"] = ecl.__file__
except Exception:
    env["ecl_file"] = None
env["ready"], env["problems"] = ready, problems
(work / "cuda").write_text("1" if env.get("cuda_available") else "0")
(work / "env.json").write_text(json.dumps(env, indent=1) + "\n")
print(json.dumps({k: env.get(k) for k in ("python", "torch", "cuda", "device_name", "cpu_count")}))
print("parts ready:", ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in ready.items()))
PYEOF
if [ ! -f "$WORK/env.json" ]; then
    record environment "failed: $PY could not describe the environment" $((SECONDS - start))
    exit 1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv || true
fi
CUDA=$(cat "$WORK/cuda")
record environment ok $((SECONDS - start)) "cuda available: $CUDA"
write_summary

ready() { [ "$(cat "$WORK/ready.$1" 2>/dev/null)" = ok ]; }
# why_not PART: the skip reason of a part whose imports fail here (record counts it as a failure)
why_not() { echo "skipped: $(cat "$WORK/ready.$1" 2>/dev/null || echo 'import check failed')"; }

# run_part NAME CAP_SECONDS CMD...: run a part bounded by its cap and the budget, record how it went
run_part() {
    local name=$1 limit rc start=$SECONDS
    limit=$(cap "$2")
    shift 2
    if [ "$limit" -lt 10 ]; then
        LAST_STATUS="skipped: budget spent" LAST_SECONDS=0
        return 1
    fi
    say "$name: $* (at most $limit s)"
    bounded "$limit" "$@"
    rc=$?
    if [ "$rc" = 0 ]; then
        LAST_STATUS=ok
    elif [ "$rc" = 124 ]; then
        LAST_STATUS="failed: stopped after $limit s (budget)"
    else
        LAST_STATUS="failed: exit status $rc"
    fi
    LAST_SECONDS=$((SECONDS - start))
    return "$rc"
}

if [ "$DRY" = 1 ]; then CAP_TESTS=90 CAP_LOSS=60 CAP_TRAIN=60; else CAP_TESTS=150 CAP_LOSS=120 CAP_TRAIN=240; fi

# ------------------------------------------------------------------------------- 1. CUDA unit tests
if skipped_by_user tests; then
    record cuda_tests "skipped: --skip" 0
elif ! ready tests; then
    record cuda_tests "$(why_not tests)" 0
else
    CUBLAS_WORKSPACE_CONFIG=:4096:8 run_part cuda_tests "$CAP_TESTS" \
        "$PY" -m pytest -m cuda tests/test_cuda.py -q -rA -p no:cacheprovider \
        --basetemp="$WORK/pytest" --junitxml="$OUT_DIR/cuda_tests.xml"
    if [ "$CUDA" = 1 ]; then
        record cuda_tests "$LAST_STATUS" "$LAST_SECONDS"
    else
        record cuda_tests "skipped: no CUDA" "$LAST_SECONDS" "pytest collected and skipped them: $LAST_STATUS"
    fi
fi
write_summary

# ------------------------------------------------------------------------------- 2. bench_loss.py
if skipped_by_user bench_loss; then
    record bench_loss "skipped: --skip" 0
elif ! ready bench_loss; then
    record bench_loss "$(why_not bench_loss)" 0
elif [ "$CUDA" = 1 ]; then
    run_part bench_loss "$CAP_LOSS" "$PY" benchmarks/bench_loss.py --device cuda --json "$OUT_DIR/bench_loss.json"
    record bench_loss "$LAST_STATUS" "$LAST_SECONDS"
elif [ "$DRY" = 1 ]; then
    run_part bench_loss "$CAP_LOSS" "$PY" benchmarks/bench_loss.py --device cpu --quick \
        --json "$OUT_DIR/bench_loss.json"
    record bench_loss "skipped: no CUDA" "$LAST_SECONDS" "plumbing: --device cpu --quick: $LAST_STATUS"
else
    record bench_loss "skipped: no CUDA" 0
fi
write_summary

# ------------------------------------------------------------------------------ 3. bench_train.py
if skipped_by_user bench_train; then
    record bench_train "skipped: --skip" 0
elif ! ready bench_train; then
    record bench_train "$(why_not bench_train)" 0
elif [ "$CUDA" = 1 ]; then
    run_part bench_train "$CAP_TRAIN" "$PY" benchmarks/bench_train.py --no-cpu --gpu-device cuda \
        --gpu-backbone resnet50 --gpu-image-size 112 --gpu-batch 128 --gpu-amp bf16 \
        --json "$OUT_DIR/bench_train.json"
    record bench_train "$LAST_STATUS" "$LAST_SECONDS"
elif [ "$DRY" = 1 ]; then
    run_part bench_train "$CAP_TRAIN" "$PY" benchmarks/bench_train.py --no-cpu --gpu-device cpu \
        --gpu-backbone test_resnet --gpu-image-size 32 --gpu-batch 4 --gpu-classes 16 --gpu-amp bf16 \
        --gpu-warmup 1 --gpu-pairs 2 --no-compile --json "$OUT_DIR/bench_train.json"
    record bench_train "skipped: no CUDA" "$LAST_SECONDS" "plumbing: GPU section on the CPU, test_resnet, no compile: $LAST_STATUS"
else
    record bench_train "skipped: no CUDA" 0
fi
write_summary

# ------------------------------------------------------------------- 4. the FaceParts full grid
PRESET=configs/faceparts-full.yaml
GRID_SET=(run.progress=false)
GRID_ARGS=(--threads 0)
MIN_FIRST=60
if [ "$DRY" = 1 ]; then
    # A tiny stand-in for the full preset: same code path, seconds per run.
    GRID_SET+=(data.num_identities=8 data.images_per_identity=4 data.image_size=32 data.num_workers=0
        model.backbone=test_resnet model.embedding_dim=32 optim.batch_size=8 optim.max_steps=2
        optim.warmup_steps=1 run.device=cpu)
    GRID_ARGS=(--threads 1 --device cpu --max-images 20)
    MIN_FIRST=10
fi

# bundle: reproduce.json (run log + result records) and the result files as a tar.gz, after every run
bundle() {
    "$PY" - "$WORK" "$OUT_DIR" "$RESULTS" "$DRY" "$BUDGET" "${#METHODS[@]}" "${#SEEDS[@]}" <<'PYEOF'
import json
import sys
import tarfile
from pathlib import Path

work, out, results = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
dry, budget, n_methods, n_seeds = sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
runs = []
if (work / "reproduce_runs.jsonl").is_file():
    runs = [json.loads(line) for line in (work / "reproduce_runs.jsonl").read_text().splitlines()]
state = json.loads((work / "reproduce_state.json").read_text()) if (work / "reproduce_state.json").is_file() else {}
files = sorted(results.glob("*.json"))
record = {
    "profile": "full",
    "study": "faceparts",
    "dry_run": dry,
    "note": "tiny stand-in sizes (--dry-run): not results" if dry else "python -m ecl reproduce --profile full",
    "budget_s": budget,
    "planned": n_methods * n_seeds,
    "completed": sum(r["status"].startswith(("ok", "kept")) for r in runs),
    **state,
    "runs": runs,
    "results": {p.name: json.loads(p.read_text()) for p in files},
}
tmp = out / "reproduce.json.tmp"
tmp.write_text(json.dumps(record, indent=1) + "\n")
tmp.replace(out / "reproduce.json")
with tarfile.open(out / "faceparts_full_results.tar.gz.tmp", "w:gz") as tar:
    for path in files:
        tar.add(path, arcname=path.name)
(out / "faceparts_full_results.tar.gz.tmp").replace(out / "faceparts_full_results.tar.gz")
PYEOF
}

# grid_state KEY=VALUE...: what reproduce.json says about the whole grid (estimate, why it stopped)
grid_state() {
    "$PY" -c 'import json, sys
path = sys.argv[1]
try:
    state = json.load(open(path))
except (OSError, ValueError):
    state = {}
for item in sys.argv[2:]:
    key, value = item.split("=", 1)
    state[key] = int(value) if value.lstrip("-").isdigit() else value
json.dump(state, open(path, "w"))
' "$WORK/reproduce_state.json" "$@"
}

# grid_run METHOD SEED STATUS SECONDS RC: one line of the run log
grid_run() {
    "$PY" -c 'import json, sys
m, s, status, seconds, rc, result = sys.argv[2:]
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps({"method": m, "seed": int(s), "status": status, "seconds": int(seconds),
                         "exit_status": int(rc), "result": result}) + "\n")
' "$WORK/reproduce_runs.jsonl" "$@"
}

# FaceParts renders its training set in one process (FaceParts._render_all, a loop over items) when a
# run first builds it; data.num_workers only sets the DataLoader's workers, which read the cached arrays.
# prerender.py renders the same items on every core into the same cache file, then checks the file
# against FaceParts' own rendering (a mismatch removes it, and the first run renders as usual).
cat >"$WORK/prerender.py" <<'PYEOF'
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from ecl.config import load_config
from ecl.data.faceparts import LANDMARK_NAMES, FaceParts, default_cache_dir

preset, overrides = sys.argv[1], sys.argv[2:]
processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
cfg = load_config(preset, overrides)
data = cfg.data
spec = dict(data.options)  # as ecl.data.factory.build_train_dataset builds it
spec.setdefault("num_identities", data.num_identities)
spec.setdefault("images_per_identity", data.images_per_identity)
spec.setdefault("seed", data.seed)
if data.name != "faceparts" or spec.pop("cache", "disk") != "disk":
    print("prerender: nothing to do (not a disk-cached FaceParts set)")
    sys.exit(0)
cache_dir = spec.pop("cache_dir", None)
spec.update(split=data.split, image_size=data.image_size)
probe = FaceParts(cache="none", **spec)
path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"faceparts-{probe.key()}.npz"
if path.is_file():
    print(f"prerender: {path} exists")
    sys.exit(0)
n, size = len(probe), data.image_size
path.parent.mkdir(parents=True, exist_ok=True)
parts = path.parent / f".prerender-{os.getpid()}"
parts.mkdir()
shapes = {
    "images": ((n, size, size, 3), np.uint8),
    "labelmaps": ((n, size, size), np.uint8),
    "landmarks": ((n, len(LANDMARK_NAMES), 2), np.float32),
    "occluded": ((n,), bool),
}
for name, (shape, dtype) in shapes.items():
    np.lib.format.open_memmap(parts / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()


def render(bounds):
    start, stop = bounds
    arrays = {name: np.load(parts / f"{name}.npy", mmap_mode="r+") for name in shapes}
    for i in range(start, stop):
        image, labelmap, landmarks, occluded = probe.render(i)
        arrays["images"][i], arrays["labelmaps"][i] = image, labelmap
        arrays["landmarks"][i], arrays["occluded"][i] = landmarks, occluded
    for array in arrays.values():
        array.flush()
    return stop - start


t0 = time.perf_counter()
step = max(1, n // (processes * 8))
chunks = [(i, min(n, i + step)) for i in range(0, n, step)]
with mp.get_context("fork").Pool(processes) as pool:
    done = sum(pool.map(render, chunks))
rendered = time.perf_counter() - t0
tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
with open(tmp, "wb") as fh:
    np.savez(fh, **{name: np.load(parts / f"{name}.npy", mmap_mode="r") for name in shapes})
os.replace(tmp, path)
for name in shapes:
    (parts / f"{name}.npy").unlink()
parts.rmdir()
# The file must be exactly what FaceParts would have written: load it as a run will, compare items.
cached = FaceParts(cache="disk", cache_dir=cache_dir, **spec)
check = sorted({0, n - 1, *np.random.default_rng(0).integers(0, n, 16).tolist()})
same = cached.cache_path == path and all(
    all(np.array_equal(a, b) for a, b in zip(cached.raw(i), probe.render(i), strict=True)) for i in check
)
if not same:
    path.unlink()
    print(f"prerender: MISMATCH with FaceParts' own rendering; removed {path} (the first run renders it)")
    sys.exit(1)
print(f"prerender: {done} images in {rendered:.1f} s on {processes} processes "
      f"({time.perf_counter() - t0:.1f} s with saving and checking) -> {path}")
PYEOF

# trained METHOD SEED: the run folder of that grid run holds a finished checkpoint
trained() {
    "$PY" -c 'import glob, json, sys
metas = glob.glob(f"{sys.argv[1]}/faceparts-full-{sys.argv[2]}-seed{sys.argv[3]}-*/checkpoints/*/meta.json")
sys.exit(0 if any(json.load(open(m)).get("complete") for m in metas) else 1)
' "$RUNS" "$1" "$2" 2>/dev/null
}

# reproduce_one METHOD SEED SECONDS: one grid run, python -m ecl reproduce, bounded
reproduce_one() {
    bounded "$3" "$PY" -m ecl reproduce --profile full --studies faceparts --methods "$1" --seeds "$2" \
        --results "$RESULTS" --runs "$RUNS" "${GRID_ARGS[@]}" --set "${GRID_SET[@]}"
}

GRID_FAILED=0
run_grid() {
    local left estimate="" stop="grid complete" failures=0 m s name result start rc status dt
    local limit
    limit=$(cap 180)
    if [ "$limit" -ge 10 ]; then
        start=$SECONDS
        say "grid: rendering the training set on every core (at most $limit s)"
        bounded "$limit" env OMP_NUM_THREADS=1 "$PY" "$WORK/prerender.py" "$PRESET" "${GRID_SET[@]}"
        rc=$?
        grid_state prerender_seconds=$((SECONDS - start)) prerender_exit_status=$rc
    fi
    for s in "${SEEDS[@]}"; do
        for m in "${METHODS[@]}"; do
            name="faceparts-$m-seed$s-full.json"
            result="$RESULTS/$name"
            if [ -f "$result" ]; then
                say "grid: $name is there from an earlier call: kept"
                grid_run "$m" "$s" kept 0 0 "$name"
                continue
            fi
            left=$(time_left)
            if [ "$left" -lt 10 ]; then
                stop="budget: ${left} s left"
                break 2
            fi
            if [ -n "$estimate" ] && [ "$left" -lt "$estimate" ]; then
                stop="budget: ${left} s left, the last run took ${estimate} s"
                break 2
            fi
            if [ -z "$estimate" ] && [ "$left" -lt "$MIN_FIRST" ]; then
                stop="budget: ${left} s left, less than the ${MIN_FIRST} s a first run needs"
                break 2
            fi
            say "grid: $m seed $s (at most $left s)"
            start=$SECONDS
            reproduce_one "$m" "$s" "$left"
            rc=$?
            status=ok
            left=$(time_left)
            if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$left" -ge 10 ] && trained "$m" "$s"; then
                # The training finished and the evaluation after it failed: a second call loads the
                # finished run and evaluates it again, so a failure after training loses no training.
                say "grid: $m seed $s: trained, but its evaluation failed: once more (loads the trained run)"
                reproduce_one "$m" "$s" "$left"
                rc=$?
                status="ok (evaluated on the second call: the first call's evaluation failed)"
            fi
            dt=$((SECONDS - start))
            if [ "$rc" = 0 ] && [ -f "$result" ]; then
                : # status set above
                estimate=$dt
                failures=0
            elif [ "$rc" = 124 ]; then
                status="stopped: budget (a resumable checkpoint is in the runs folder)"
            else
                status="failed: exit status $rc"
                failures=$((failures + 1))
                GRID_FAILED=$((GRID_FAILED + 1))
            fi
            say "grid: $m seed $s: $status, $dt s"
            grid_run "$m" "$s" "$status" "$dt" "$rc" "$([ -f "$result" ] && echo "$name")"
            grid_state estimate_s="${estimate:-0}"
            bundle
            if [ "$rc" = 124 ]; then
                stop="budget: the run under way was stopped"
                break 2
            fi
            if [ "$failures" -ge 2 ]; then
                stop="two runs failed in a row"
                break 2
            fi
        done
    done
    grid_state stopped="$stop" estimate_s="${estimate:-0}"
    bundle
    say "grid: stopped: $stop"
}

if skipped_by_user reproduce; then
    record reproduce "skipped: --skip" 0
elif ! ready reproduce; then
    record reproduce "$(why_not reproduce)" 0
elif [ "$CUDA" != 1 ] && [ "$DRY" != 1 ]; then
    record reproduce "skipped: no CUDA" 0 "the full profile needs a GPU; --dry-run runs a tiny stand-in on the CPU"
else
    grid_start=$SECONDS
    say "grid: ${PRESET}, methods ${METHODS[*]}, seeds ${SEEDS[*]}, runs $RUNS, results $RESULTS"
    run_grid
    detail=$("$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%s of %s runs; stopped: %s" % (r["completed"], r["planned"], r.get("stopped")))' "$OUT_DIR/reproduce.json")
    if [ "$GRID_FAILED" = 0 ]; then status=ok; else status="failed: $GRID_FAILED runs failed"; fi
    if [ "$CUDA" = 1 ]; then
        record reproduce "$status" $((SECONDS - grid_start)) "$detail"
    else
        record reproduce "skipped: no CUDA" $((SECONDS - grid_start)) "plumbing: a tiny stand-in on the CPU, $detail: $status"
    fi
fi

# Exit status: 1 when a part (or a dry run's plumbing, or a grid run) failed; summary.json says which.
if [ "$FAILURES" -gt 0 ]; then exit 1; fi
exit 0
