#!/usr/bin/env bash
# Native backtrace of a peftcore TORCH_CHECK failure (cuda-gdb also debugs host code),
# plus the toolchain facts that decide how exceptions unwind.
PY=${PYTHON:-python3}
c++ --version | head -1; g++ --version | head -1; cmake --version | head -1
env | grep -E "^(CC|CXX|CUDAHOSTCXX|CFLAGS|CXXFLAGS|LDFLAGS)=" || true
SO=$(cd /tmp && "$PY" -c "import peftcore._C as m; print(m.__file__)")
ldd "$SO" | grep -E "gomp|omp|stdc|gcc_s|c10"
readelf -p .comment "$SO" | grep -i "gcc\|clang" | sort -u | head -5
cd /tmp && timeout 120 cuda-gdb -q -batch -ex "set pagination off" -ex "set print thread-events off" \
  -ex run -ex bt -ex "info sharedlibrary" --args "$PY" -c \
  "import torch, peftcore; torch.ops.peftcore.multi_tensor_sumsq([torch.zeros(3, dtype=torch.int32)])" 2>&1 \
  | grep -v "^\[New Thread\|^\[Thread\|Downloading\|^warning: " | grep -E "^#|SIG|signal|gomp|omp|stdc|gcc_s|peftcore|c10" | head -60
