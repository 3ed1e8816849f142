"""Does a TORCH_CHECK failure in a tiny inline extension come back as a Python
error with this machine's compiler, in C++17 and in C++20? Separates a toolchain
problem from a peftcore one when bench/diag/errors.py reports a crash."""

import subprocess
import sys

SOURCE = r'''
#include <torch/extension.h>
at::Tensor fails(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 7, "fails: x must be 7-D, got ", x.sizes());
  return x;
}
TORCH_LIBRARY(diag_%(tag)s, m) { m.def("fails(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(diag_%(tag)s, CPU, m) { m.impl("fails", &fails); }
'''

CODE = r'''
import faulthandler, torch
from torch.utils.cpp_extension import load_inline
faulthandler.enable()
load_inline("diag_%(tag)s", cpp_sources=[%(src)r], extra_cflags=["-std=%(std)s", "-O2"%(extra)s],
            is_python_module=False, verbose=False)
try:
    torch.ops.diag_%(tag)s.fails(torch.zeros(2))
except RuntimeError as e:
    print("RuntimeError:", str(e).splitlines()[0])
'''

for std, extra in (("c++17", ""), ("c++20", ""), ("c++20", ', "-fopenmp"')):
    tag = std.replace("+", "p") + ("_omp" if extra else "")
    code = CODE % {"tag": tag, "src": SOURCE % {"tag": tag}, "std": std, "extra": extra}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp")
    lines = (r.stdout + r.stderr).strip().splitlines()
    said = [line for line in lines if line.startswith("RuntimeError")] or lines[-1:]
    print(f"[{tag}] rc={r.returncode}: {said[0] if said else ''}")
    if r.returncode:
        print("   " + "\n   ".join(lines[-15:]))
