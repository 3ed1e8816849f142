"""Does a failed TORCH_CHECK inside peftcore come back as a Python RuntimeError on
this machine (CPU and CUDA)? Each case runs in its own process so that a crash
names the case instead of ending the run."""

import subprocess
import sys

CASES = {
    "lora bad shape": "torch.ops.peftcore.lora_linear(torch.randn(2, 5, device=D), torch.randn(3, 4, device=D), None, torch.randn(2, 4, device=D), torch.randn(3, 2, device=D), 1.0, 0.0, None)",
    "bat bad r": "torch.ops.peftcore.bone_bat_linear(torch.randn(2, 10, device=D), torch.randn(12, 10, device=D), None, torch.zeros(3, 4, 4, device=D))",
    "sumsq bad dtype": "torch.ops.peftcore.multi_tensor_sumsq([torch.zeros(3, dtype=torch.int32, device=D)])",
    "aten error": "torch.zeros(2, device=D).view(3)",
}

for device in ("cpu", "cuda"):
    for name, expr in CASES.items():
        code = ("import faulthandler, torch, peftcore; faulthandler.enable(); D = %r\n"
                "try:\n    %s\n    print('NO ERROR')\nexcept RuntimeError as e:\n    print('RuntimeError:', str(e).splitlines()[0][:150])\n"
                % (device, expr))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp")
        tail = (r.stdout + r.stderr).strip().splitlines()
        print(f"[{device}] {name}: rc={r.returncode} {tail[-1] if tail else ''}")
        if r.returncode != 0:
            print("   " + "\n   ".join(tail[:12]))
