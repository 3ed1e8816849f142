"""peftcore's CUDA kernels run on the host through tests/emulation/cuda_host_emulation.h,
so that CI, which has no GPU, checks their indexing, tiling, split reductions, masks,
metadata packing and bounds (AddressSanitizer): the low-rank engine's dropout kernels
bit for bit against the host mask; the multi-tensor
LAMB / LARS / sum-of-squares kernels against host loops over the same formulas; the
sparse compose / revert kernels over parameters of every dtype.
On a GPU the CUDA tests run the kernels for real."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("program,checks", [("lowrank_kernels_emulated", 3 * 5), ("optim_kernels_emulated", 16),
                                            ("sparse_kernels_emulated", 10)])
def test_cuda_kernels_on_the_host(tmp_path, program, checks):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++")
    binary = tmp_path / program
    build = subprocess.run(
        [compiler, "-std=c++20", "-O2", "-g", "-fsanitize=address", "-pthread", f"-I{ROOT / 'csrc'}",
         f"-I{ROOT / 'tests' / 'emulation'}", str(ROOT / "tests" / "emulation" / f"{program}.cpp"),
         "-o", str(binary)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "0 failures" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    assert sum(line.startswith("ok ") for line in run.stdout.splitlines()) == checks
