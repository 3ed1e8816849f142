"""Does a failed TORCH_CHECK inside peftcore come back as a Python RuntimeError on
this machine (CPU and CUDA)? Each case runs in its own process so that a crash
names the case instead of ending the run. On the first crash it also reruns that
case with the x86 shadow stack off and under a debugger (cuda-gdb debugs host code
too), printing the native backtrace, the signal's code and the faulting instructions."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

CASES = {
    "lora bad shape": "torch.ops.peftcore.lora_linear(torch.randn(2, 5, device=D), torch.randn(3, 4, device=D), None, torch.randn(2, 4, device=D), torch.randn(3, 2, device=D), 1.0, 0.0, None)",
    "bat bad r": "torch.ops.peftcore.bone_bat_linear(torch.randn(2, 10, device=D), torch.randn(12, 10, device=D), None, torch.zeros(3, 4, 4, device=D))",
    "sumsq bad dtype": "torch.ops.peftcore.multi_tensor_sumsq([torch.zeros(3, dtype=torch.int32, device=D)])",
    "aten error": "torch.zeros(2, device=D).view(3)",
}


def program(device: str, expr: str) -> str:
    return ("import faulthandler, torch, peftcore; faulthandler.enable(); D = %r\n"
            "try:\n    %s\n    print('NO ERROR')\nexcept RuntimeError as e:\n"
            "    print('RuntimeError:', str(e).splitlines()[0][:150])\n" % (device, expr))


def run(args, env=None):
    r = subprocess.run(args, capture_output=True, text=True, cwd="/tmp", env=env, timeout=180)
    return r.returncode, (r.stdout + r.stderr).strip().splitlines()


def investigate(code: str) -> None:
    # Is it this machine's toolchain? The same check in a tiny inline extension.
    rc, lines = run([sys.executable, str(Path(__file__).with_name("toolchain.py"))])
    print("   " + "\n   ".join(lines[-8:]))
    env = dict(os.environ, GLIBC_TUNABLES="glibc.cpu.x86_shstk=off:glibc.cpu.x86_ibt=off")
    rc, lines = run([sys.executable, "-c", code], env)
    print(f"   with the shadow stack off: rc={rc} {lines[-1] if lines else ''}")
    debugger = shutil.which("cuda-gdb") or shutil.which("gdb")
    if debugger is None:
        return
    rc, lines = run([debugger, "-q", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 30",
                     "-ex", "p $_siginfo.si_code", "-ex", "x/4i $pc", "--args", sys.executable, "-c", code])
    keep = [ln for ln in lines if ln.startswith(("#", "$", "=>", "   0x", "Program", "Thread"))
            and "New Thread" not in ln]
    print("   " + "\n   ".join(keep[:45]))


# Does _C carry its own copy of the C++ runtime (the cause found on the H200 box)?
import peftcore
nm = shutil.which("nm")
if nm:
    defined = subprocess.run([nm, "-D", "--defined-only", peftcore._C.__file__], capture_output=True, text=True).stdout
    print("libstdc++ symbols defined in _C:", sum(" _ZNSt" in ln or " _ZNSo" in ln for ln in defined.splitlines()))
cxx = shutil.which("g++")
if cxx:
    print("g++ libstdc++.so:", subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip())

investigated = False
for device in ("cpu", "cuda"):
    for name, expr in CASES.items():
        code = program(device, expr)
        rc, tail = run([sys.executable, "-c", code])
        said = [ln for ln in tail if ln.startswith(("RuntimeError", "NO ERROR"))] or tail[-1:]
        print(f"[{device}] {name}: rc={rc} {said[0] if said else ''}")
        if rc != 0 and not investigated:
            investigated = True
            investigate(code)
