"""From a PyTorch module to a spec: trace it (trace.py), map every module and op to an archcalc kind (mapping.py)
and write the spec text (write.py). `archcalc import` and `archcalc.from_module` are this package."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from archcalc.core import yamlsrc
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import Spec, parse_spec
from archcalc.torch.importer.trace import ImportFailure, trace_module
from archcalc.torch.importer.write import write_spec

__all__ = ["ImportFailure", "Imported", "exported_input", "from_module", "load_model"]


class Imported(NamedTuple):
    """An imported module: the spec text, the parsed spec, warnings (parameters the forward never reaches, ops left
    out) and, with allow_unknown, the ops that stand as placeholders and what the totals leave out for them."""

    text: str
    spec: Spec
    warnings: tuple[str, ...]
    unknown: tuple[str, ...]


def from_module(module: nn.Module, input_shape: Sequence[int], name: str | None = None, *,
                allow_unknown: bool = False, description: str = "", source: str = "", blocks: bool = True) -> Imported:
    """The archcalc spec of `module` (traced in eval mode on one sample of `input_shape`, channels first); with
    `blocks`, repeated structure is written as parameterized blocks and stages as `repeat:`, otherwise flat.

    The module is traced, not run: modules on the meta device need no memory; others run on fake tensors."""
    shape = tuple(int(s) for s in input_shape)
    was_training = module.training
    module.eval()
    try:
        traced = trace_module(module, shape, allow_unknown)
    finally:
        module.train(was_training)
    spec_name = name or type(module).__name__
    text = write_spec(traced, spec_name, description or f"imported from {spec_name} by archcalc import",
                      source, blocks=blocks)
    display = f"<import of {spec_name}>"
    spec = parse_spec(yamlsrc.load(text, display), display)
    return Imported(text, spec, tuple(traced.warnings), tuple(traced.unknown))


def _callable(ref: str) -> tuple[Callable[..., Any], str]:
    """`package.module:callable`, `path/to/file.py` (its build_model) or `file.py:callable`."""
    target, sep, attr = ref.partition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ArchcalcError(f"{ref}: no such file")
        module_name = f"_archcalc_import_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ArchcalcError(f"{ref}: cannot load it as Python source")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as exc:  # the user's file: report, do not hide
            raise ArchcalcError(f"{ref}: running the file failed: {type(exc).__name__}: {exc}") from None
        attr = attr or "build_model"
        fn = getattr(loaded, attr, None)
        if fn is None:
            raise ArchcalcError(f"{ref}: the file defines no {attr}() (archcalc export writes build_model())")
        return fn, path.stem
    if not sep or not attr or not target:
        raise ArchcalcError(f"MODEL must be package.module:callable (torchvision.models:resnet50) or a .py file "
                            f"with build_model(), not '{ref}'")
    try:
        obj: Any = importlib.import_module(target)
    except ImportError as exc:
        raise ArchcalcError(f"{ref}: cannot import {target}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ArchcalcError(f"{ref}: {target} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchcalcError(f"{ref}: {attr} is not callable")
    return obj, attr.rsplit(".", 1)[-1]


def load_model(ref: str, kwargs: Mapping[str, Any] | None = None, meta: bool = True) -> tuple[nn.Module, str]:
    """Construct the model MODEL names, on the meta device where its constructor allows (no memory, no init
    arithmetic) unless `meta` is False (the model is to run), else on the CPU; returns it with a name for the
    spec."""
    fn, name = _callable(ref)
    kwargs = dict(kwargs or {})
    try:
        if not meta:
            raise RuntimeError  # straight to the CPU build below
        with torch.device("meta"):
            model = fn(**kwargs)
    except Exception:  # a constructor that needs real tensors (it loads weights, say): build it normally
        try:
            model = fn(**kwargs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]  # not torch's C++ stack, if it added one
            raise ArchcalcError(f"{ref}: constructing the model failed: {type(exc).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise ArchcalcError(f"{ref}: returned {type(model).__name__}, not a torch.nn.Module")
    if kwargs.get("model_name") and isinstance(kwargs["model_name"], str):
        name = kwargs["model_name"]
    return model, name


def exported_input(module: object, model: str) -> tuple[int, ...]:
    """The INPUT_SHAPE of the file or package MODEL names, or of the module defining the model's class."""
    target = model.partition(":")[0]
    sources = [sys.modules.get(type(module).__module__)]
    if target.endswith(".py"):
        path = Path(target).resolve()
        sources += [m for m in list(sys.modules.values())
                    if isinstance(getattr(m, "__file__", None), str) and Path(m.__file__).resolve() == path]
    else:
        sources.append(sys.modules.get(target))
    for source in sources:
        shape = getattr(source, "INPUT_SHAPE", None)
        if isinstance(shape, tuple) and shape and all(isinstance(s, int) for s in shape):
            return shape
    raise ArchcalcError(f"{model}: give the input with --input (e.g. --input 3x224x224)")


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise ArchcalcError("--kwargs: the value is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and an integer past Python's 4,300-digit limit
        if not isinstance(exc, json.JSONDecodeError):
            raise ArchcalcError("--kwargs: an integer has more than 4,300 digits (at most 2^63 - 1)") from None
        raise ArchcalcError(f"--kwargs: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArchcalcError("--kwargs: expected a JSON object such as '{\"num_classes\": 10}'")
    for key, item in value.items():
        if isinstance(item, int) and not -(2**63) <= item < 2**63:
            raise ArchcalcError(f"--kwargs: {key}: {item:.3e} is out of range (at most 2^63 - 1)")
    return value
