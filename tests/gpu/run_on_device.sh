#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (written for one H200, CUDA 13): build and install unetrt
# with its CUDA kernels, run the GPU tests, then the GPU benchmark. Run from the repository
# root:  bash tests/gpu/run_on_device.sh
#
# Every step has a timeout and the whole script ends within 8 minutes (DEADLINE_S). A test
# failure does not stop the benchmark; the exit status is non-zero if any step failed (or
# if no GPU test ran at all). CUDA_ARCHS overrides the GPU architectures compiled
# (default 90-real, the H200's only: the CMake default list compiles five, slowly).
set -euo pipefail
cd "$(dirname "$0")/../.."

DEADLINE_S=${DEADLINE_S:-470}
CUDA_ARCHS=${CUDA_ARCHS:-90-real}
START=$(date +%s)
FAILED=()
LOGS=$(mktemp -d)

# Seconds a step may take: its own cap, and never past the deadline (10 s kept in hand).
budget() {
  local cap=$1 left
  left=$((START + DEADLINE_S - 10 - $(date +%s)))
  if ((left < cap)); then cap=$left; fi
  if ((cap < 1)); then cap=1; fi
  echo "$cap"
}

step() {  # step NAME CAP_S COMMAND...: run with a timeout, note a failure, go on
  local name=$1 cap rc=0
  cap=$(budget "$2")
  shift 2
  echo
  echo "=== $name (timeout ${cap} s, $(($(date +%s) - START)) s elapsed)"
  timeout --kill-after=10 "$cap" "$@" || rc=$?
  if ((rc != 0)); then
    if ((rc == 124 || rc == 137)); then
      echo "=== $name: TIMED OUT after ${cap} s"
    else
      echo "=== $name: FAILED (exit $rc)"
    fi
    FAILED+=("$name")
  fi
  return 0
}

echo "=== GPU"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader \
  || nvidia-smi -L || echo "nvidia-smi failed"

# CMake enables the CUDA kernels when it finds nvcc (on PATH, or CUDACXX).
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
echo "nvcc: $(command -v nvcc || echo 'not found: the build will have no CUDA kernels')"
python -c 'import sys; print("python", sys.version.split()[0], sys.executable)'

export PIP_BREAK_SYSTEM_PACKAGES=1  # a system Python that refuses pip installs
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
step "build and install (CUDA archs $CUDA_ARCHS)" 240 \
  python -m pip install --no-build-isolation --no-deps --no-cache-dir \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" \
  --config-settings=build-dir="build/device-{wheel_tag}" .
installed=1
if ((${#FAILED[@]})); then installed=0; fi

# The installed build must have its CUDA part and see the GPU; print what it says.
CHECK_BUILD=$(cat <<'EOF'
import unetrt._core as core
info = core.build_info()
print("unetrt._core", core.__file__)
print("build_info", info)
if not info["cuda"]:
    raise SystemExit("unetrt was built without CUDA (nvcc not found at build time)")
if info["cuda_devices"] < 1:
    raise SystemExit("unetrt sees no CUDA GPU")
from unetrt.gpu.device import device_properties
print("cuda:0", device_properties(0))
for name in ("numpy", "onnx", "onnxruntime", "cupy", "torch", "tensorrt"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__})")
EOF
)
if ((installed)); then
  step "build info" 60 python -c "$CHECK_BUILD"
fi

if ((installed)); then
  log="$LOGS/pytest.log"
  rc=0
  echo
  cap=$(budget 180)
  echo "=== GPU tests (timeout ${cap} s, $(($(date +%s) - START)) s elapsed)"
  timeout --kill-after=10 "$cap" python -m pytest -q -p no:cacheprovider tests/gpu -rs 2>&1 \
    | tee "$log" || rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    echo "=== GPU tests: FAILED (exit $rc)"
    FAILED+=("GPU tests")
  elif ! grep -Eq '[0-9]+ passed' "$log"; then
    echo "=== GPU tests: none ran (all skipped?)"
    FAILED+=("GPU tests (none ran)")
  fi

  step "GPU benchmark" 150 python benchmarks/bench_gpu.py
else
  echo "=== not testing or benchmarking: the install failed"
fi

echo
echo "=== done in $(($(date +%s) - START)) s"
if ((${#FAILED[@]})); then
  printf '=== failed: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "=== all steps passed"
