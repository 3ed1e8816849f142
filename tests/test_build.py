import subprocess

import pytest
import sys

import torch

import peftcore


def test_build_info_fields():
    info = peftcore.build_info()
    assert set(info) >= {"version", "torch_version", "cuda_compiled", "cuda_version", "cuda_architectures"}
    assert info["version"] == peftcore.__version__
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda_compiled"], bool)
    if info["cuda_compiled"]:
        assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
        assert info["cuda_architectures"]


def test_ops_registered_for_backends():
    for name in ("lora_linear", "lora_linear_backward"):
        op = getattr(torch.ops.peftcore, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        if peftcore.build_info()["cuda_compiled"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")


def test_one_cpp_runtime_in_the_process():
    # A libstdc++ linked statically into _C keeps its own locale facet ids: numbers
    # formatted into an error message then read a wrong facet (truncated message or
    # crash). _C must link the shared libstdc++ torch uses, so it defines none of it.
    import shutil
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    symbols = subprocess.run(["nm", "-D", "--defined-only", peftcore._C.__file__],
                             capture_output=True, text=True, check=True).stdout
    assert "_ZNSt6locale7classicEv" not in symbols and "_ZNSo9_M_insertIlEERSoT_" not in symbols
    with pytest.raises(RuntimeError, match=r"in_features=4\] to match weight \[out_features, in_features\]=\[3, 4\], got \[2, 5\]"):
        torch.ops.peftcore.lora_linear(torch.randn(2, 5), torch.randn(3, 4), None, torch.randn(2, 4),
                                       torch.randn(3, 2), 1.0, 0.0, None)


def test_import_refuses_a_different_torch(tmp_path):
    # Simulate a binary built for another torch: the import must fail with a rebuild hint.
    code = (
        "import torch; torch.__version__ = '0.0.1-other'\n"
        "try:\n"
        "    import peftcore\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "ERR peftcore was built against torch" in out.stdout, out.stdout + out.stderr
    assert "Rebuild" in out.stdout


def test_bench_cli_parses_op_names_and_refuses_unknown_ones(capsys):
    from peftcore.bench.run import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "lamb" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--ops", "lora,nope", "--quick"])
    assert "unknown family 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--repeat", "0", "--quick"])
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_gpu_check_script_parses():
    """bench/gpu_check.sh runs only on a lent GPU machine: at least keep it valid bash."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_gpu_parts_diagnostic_runs_on_cpu():
    """bench/diag/skinny_parts.py is meant for scarce GPU minutes: a Python error there
    would waste a device run, so its small CPU variant runs here."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "diag" / "skinny_parts.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--small"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("====") == 3 and "dA: T^T x in 16 N-slabs" in out.stdout


def test_bench_counts_page_faults_on_the_cpu():
    # A fresh 64 MiB mapping faults in every page it touches: 16384 of 4 KiB, or 32
    # where transparent huge pages back it. (Not a fresh tensor: after other tests,
    # glibc may serve 64 MiB from heap memory it kept mapped, and nothing faults.)
    # Where the kernel reports no minor faults at all, the column must be absent.
    import math

    from peftcore.bench.common import kernel_counts_page_faults, time_alternating, timing_row, touch_fresh_mapping

    timing = time_alternating({"fresh": lambda: touch_fresh_mapping(64 << 20)}, torch.device("cpu"),
                              warmup=1, reps=2, rounds=1)["fresh"]
    row = timing_row({"op": "touch"}, torch.device("cpu"), "fresh", timing)
    if kernel_counts_page_faults():
        assert timing.faults_per_call >= 16
        assert row["faults_per_call"] == timing.faults_per_call
    else:
        assert math.isnan(timing.faults_per_call)
        assert "faults_per_call" not in row


def test_bench_leaves_the_fault_column_out_where_the_kernel_does_not_count(monkeypatch):
    import math

    from peftcore.bench import common

    monkeypatch.setattr(common, "kernel_counts_page_faults", lambda: False)
    timing = common.time_alternating({"fill": lambda: torch.ones(1024)}, torch.device("cpu"),
                                     warmup=1, reps=2, rounds=1)["fill"]
    assert math.isnan(timing.faults_per_call)
    assert "faults_per_call" not in common.timing_row({"op": "fill"}, torch.device("cpu"), "fill", timing)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_times_cuda_calls_back_to_back_cuda():
    # time_stream: one sample per call, each the GPU time of that call alone (a sleep
    # kernel ten times longer measures about ten times longer), with no host sync
    # between calls.
    import statistics

    from peftcore.bench.common import time_stream

    short = time_stream(lambda: torch.cuda._sleep(200_000), 5)
    long = time_stream(lambda: torch.cuda._sleep(2_000_000), 5)
    assert len(short) == len(long) == 5 and min(short) > 0
    assert 5 < statistics.median(long) / statistics.median(short) < 15
