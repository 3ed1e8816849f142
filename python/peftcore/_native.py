"""Loads the compiled extension after checking it was built for the running torch.

A binary compiled against another torch release can fail to load with an
undefined-symbol error, or load and misbehave; the version is therefore checked
from a plain Python file written at build time, before `_C` is touched.
"""

from __future__ import annotations

import torch

_REBUILD_HINT = (
    "Rebuild peftcore against the installed torch: "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` in the source tree "
    "(or `make install`)."
)

try:
    from . import _build_config
except ImportError as exc:  # pragma: no cover - only when the package was never built
    raise ImportError(
        "peftcore's compiled extension is missing: the package was imported from a source "
        "tree that was not built. " + _REBUILD_HINT
    ) from exc

if torch.__version__ != _build_config.TORCH_VERSION:
    raise ImportError(
        f"peftcore was built against torch {_build_config.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed. " + _REBUILD_HINT
    )

from . import _C  # noqa: E402  (loads the library and registers torch.ops.peftcore)


def build_info() -> dict:
    """What this binary was compiled with: versions, CUDA and architectures."""
    from . import _build_config as cfg

    return dict(_C.build_info(), cxx_compiler=cfg.CXX_COMPILER, cuda_host_compiler=cfg.CUDA_HOST_COMPILER)
