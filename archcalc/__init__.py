"""archcalc: a CNN architecture calculator and profiler.

The library API, re-exported here (loaded on first use, so `import archcalc` stays cheap):

- `summary(model, input_size=None, **settings)`: what `archcalc calc` shows, as a value whose str() is the table
  (archcalc.api); `model` is an nn.Module, a spec path, a bundled spec's name or a Spec;
- `analyze(model, input_size=None, **settings)`: the Report of pure integers (archcalc.api; for a spec it never
  imports torch);
- `Settings`: the analysis settings, one frozen value (archcalc.core.settings);
- `open_spec(ref)` / `load_spec(path)`: a spec by bundled name or path / from a file (archcalc.core.spec);
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
    "summary": "archcalc.api",
    "analyze": "archcalc.api",
    "Settings": "archcalc.core.settings",
    "build_module": "archcalc.torch.build",
    "from_module": "archcalc.torch.importer",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'archcalc' has no attribute {name!r}")
