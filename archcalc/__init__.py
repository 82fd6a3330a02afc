"""archcalc: a CNN architecture calculator and profiler.

The library API, re-exported here (loaded on first use, so `import archcalc` stays cheap):

- `open_spec(ref)` / `load_spec(path)`: a spec by bundled name or path / from a file (archcalc.core.spec);
- `analyze(spec, ...)`: the Report of pure integers (archcalc.core.analyze); never imports torch;
- `build_module(report)`: the torch nn.Module (archcalc.torch.build); imports torch;
- `from_module(module, input_shape)`: the spec of a torch module, traced with torch.fx (archcalc.torch.importer);
  imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "open_spec": "archcalc.core.spec",
    "load_spec": "archcalc.core.spec",
    "analyze": "archcalc.core.analyze",
    "build_module": "archcalc.torch.build",
    "from_module": "archcalc.torch.importer",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'archcalc' has no attribute {name!r}")
