"""The LoRA CUDA kernels run on the host through tests/emulation/cuda_host_emulation.h,
so that CI, which has no GPU, checks their tiling, split reductions, dropout masks
and bounds (AddressSanitizer): the tensor-core skinny kernels against a float64
evaluation, the dropout kernels bit for bit. On a GPU the CUDA tests run them for real."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_lora_cuda_kernels_on_the_host(tmp_path):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++")
    binary = tmp_path / "lora_kernels_emulated"
    build = subprocess.run(
        [compiler, "-std=c++20", "-O2", "-g", "-fsanitize=address", "-pthread", f"-I{ROOT / 'csrc'}",
         f"-I{ROOT / 'tests' / 'emulation'}", str(ROOT / "tests/emulation/lora_kernels_emulated.cpp"),
         "-o", str(binary)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "0 failures" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 17 + 3 * 5
