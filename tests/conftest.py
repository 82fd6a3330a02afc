"""Shared test helpers."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from archcalc.core.analyze import Report, analyze
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec

# CI (.ci/run sets ARCHCALC_CI=1) draws the same examples on every run, so its verdict on a commit is the one the
# commit's author saw; a contributor's runs draw new ones each time, and so keep exploring.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("ARCHCALC_CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent


# The bundled specs the default run builds and runs through torch, one of each family and structure (a chain, two-way
# branches, parallel and dense blocks, skips to named tensors, several outputs, 1-D/3-D, squeeze-excitation, a
# segmentation head). Every other bundled spec takes the same checks in the `exhaustive` tier, which .ci/run runs
# after the README's command; the analytic checks (shapes, params, MACs against the published figures) run for
# every spec in both.
FAST_ZOO = frozenset({
    "lenet5", "alexnet", "nin", "resnet18", "googlenet", "fpn_resnet50", "unet", "alphago_policy",
    "torchvision/mobilenet_v3_small", "torchvision/shufflenet_v2_x0_5", "torchvision/squeezenet1_1",
    "torchvision/efficientnet_b0", "torchvision/convnext_tiny", "torchvision/regnet_y_400mf",
    "torchvision/lraspp_mobilenet_v3_large", "torchvision/r3d_18",
})


def tiered(values: Iterable[object], fast: Container[object]) -> list[object]:
    """pytest parameters: the values in `fast` run by default, the others carry the `exhaustive` mark."""
    return [v if v in fast else pytest.param(v, marks=pytest.mark.exhaustive) for v in values]


def report_of(name_or_path: str, **kwargs: object) -> Report:
    """Analyze a bundled spec by name (or a path)."""
    specs = bundled()
    path = specs[name_or_path] if name_or_path in specs else Path(name_or_path)
    return analyze(load_spec(path), **kwargs)  # type: ignore[arg-type]


def load_text(text: str, name: str = "random.yaml"):  # type: ignore[no-untyped-def]
    """The Spec for YAML text (written to a temporary file, as a user's spec would be)."""
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        return load_spec(path)


def analyzes(text: str) -> bool:
    """Whether the analyzer accepts the spec text (property tests drop candidates it rejects)."""
    from archcalc.core.errors import SpecError

    try:
        analyze(load_text(text))
    except SpecError:
        return False
    return True


def spec_text(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def write_spec(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "spec.yaml") -> Path:
        return spec_text(tmp_path, text, name)

    return write


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite tests/golden/* from the current output")


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """profile caches the device ceiling per machine: the tests use a cache of their own, never ~/.cache."""
    import os

    os.environ["ARCHCALC_CACHE_DIR"] = str(tmp_path_factory.mktemp("archcalc-cache"))


def exits_cleanly(result, code: int = 2) -> None:  # type: ignore[no-untyped-def]
    """A CliRunner result ended by the CLI's own exit with `code`, not by an exception escaping the command.

    CliRunner catches an escaped exception into `result.exception` (exit code 1); its traceback never reaches
    `result.output`, so looking for "Traceback" there checks nothing. A deliberate exit is a SystemExit.
    """
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """A test that pins torch to one thread (for an exact memory count) must not leave the rest of the suite there:
    kernels save different temporaries at one thread, so later tests would see a machine no user runs."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def example_spec(kind: Any, ex: Any) -> tuple[list[int], list[str]]:
    """A kind's example as a one-layer spec: its input shape and layers. A flattened input is written C x 1 and
    flattened first; a token sequence (N x C) is the tokens of a C x grid input (`to_tokens` first)."""
    from archcalc.core.kinds.base import Tokens

    args = ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in ex.args.items())
    layer = f"{kind.name}: {{{args}}}"
    if isinstance(ex.input, Tokens):
        extra = ex.input[0] - math.prod(ex.input.grid)  # tokens put first (MViT's: pooled_attention; GCViT's
        # global queries, a window of them: global_query_attention)
        cls = ["class_token"] if extra == 1 else [f"class_token: {{count: {extra}}}"] if extra > 1 else []
        return [ex.input[1], *ex.input.grid], ["to_tokens", *cls, layer]
    if len(ex.input) > 1:
        return list(ex.input), [layer]
    return [ex.input[0], 1], ["flatten", layer]
