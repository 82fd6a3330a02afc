"""What every command shares: option types, consoles, the error boundary, loading a spec argument.

Command modules import from here and from the library below them; never from each other.
"""

import functools
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import typer

from archcalc.core.errors import ArchcalcError, SpecError

if TYPE_CHECKING:
    from rich.console import Console

    from archcalc.core.spec import Spec

F = TypeVar("F", bound=Callable[..., Any])


class Fmt(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class TableOrJson(str, Enum):
    """--format for the commands that run models (validate, profile)."""

    table = "table"
    json = "json"


class Convention(str, Enum):
    macs = "macs"
    torch = "torch"
    fvcore = "fvcore"
    full = "full"


class SavedFor(str, Enum):
    """--device of the analytic commands: whose kernels the training saved-bytes figure follows."""

    cuda = "cuda"
    cpu = "cpu"


SavedForOpt = Annotated[SavedFor, typer.Option(
    "--device", help="whose kernels the training saved-bytes figure follows: float16/bfloat16 batch and layer norm "
    "statistics are float32 on cuda, float16/bfloat16 on cpu; dropout keeps a bool mask on cuda, a noise tensor on "
    "cpu")]


InputGradOpt = Annotated[bool, typer.Option(
    "--input-requires-grad", help="saved bytes with an input that needs a gradient (adversarial training, saliency "
    "maps); by default the input batch needs none, as in a training step, and layers before the first trainable "
    "one keep nothing")]


def _dtype_enum(name: str, use: str) -> Any:
    from archcalc.core.conventions import dtypes

    return Enum(name, {d: d for d in dtypes(use)}, type=str)  # type: ignore[misc]


# --dtype choices, from the one dtype table in core.conventions (type checkers see a plain str Enum).
if TYPE_CHECKING:
    class DType(str, Enum):
        pass

    class RunDType(str, Enum):
        pass

    class ProfileDType(str, Enum):
        pass
else:
    DType = _dtype_enum("DType", "analytic")
    RunDType = _dtype_enum("RunDType", "runs")
    ProfileDType = _dtype_enum("ProfileDType", "profiles")
F32, RUN_F32, PROFILE_F32 = DType("float32"), RunDType("float32"), ProfileDType("float32")  # the defaults


def _table_enum(name: str, names: Any) -> Any:
    return Enum(name, {n: n for n in names}, type=str)  # type: ignore[misc]


# --optimizer, --amp and --fit-for choices, from the one table of each in core.settings.
if TYPE_CHECKING:
    class Optimizer(str, Enum):
        sgd = "sgd"

    class Amp(str, Enum):
        pass

    class FitFor(str, Enum):
        training = "training"
else:
    from archcalc.core.settings import AMP, FIT_FOR, OPTIMIZERS

    Optimizer = _table_enum("Optimizer", OPTIMIZERS)
    Amp = _table_enum("Amp", AMP)
    FitFor = _table_enum("FitFor", FIT_FOR)


def settings(batch: int = 1, dtype: Any = None, input: str | None = None, convention: Any = None,
             device: Any = None, input_requires_grad: bool = False, strict: bool = False, optimizer: Any = None,
             amp: Any = None) -> Any:
    """The one Settings value (core.settings) from a command's options: enums to their values, --input parsed.
    A bad combination (--amp with a --dtype other than float32) is an error here, before any work."""
    from archcalc.core.settings import Settings

    def value(option: Any, default: Any) -> Any:
        return default if option is None else option.value

    return Settings(batch=batch, dtype=value(dtype, "float32"), convention=value(convention, "torch"),
                    input_shape=input_override(input), device=value(device, "cuda"),
                    input_requires_grad=input_requires_grad, strict=strict, optimizer=value(optimizer, "sgd"),
                    amp=value(amp, None))


def out_console() -> "Console":
    """rich for the wrapped-text tables (kinds, zoo, validate, profile). User text is never read as markup or emoji
    (`file.yaml:100:5` must not become an emoji, `[out/filters]` not a style tag)."""
    from rich.console import Console  # not on the JSON/CSV path: rich's console costs start-up time

    console = Console(highlight=False, emoji=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200, highlight=False, soft_wrap=False, emoji=False, markup=False)
    return console


def rich_text(renderable: Any) -> str:
    """A rich table as text, as out_console() prints it off a terminal (200 columns, no colour): for --output."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, highlight=False, soft_wrap=False, emoji=False, markup=False,
            color_system=None).print(renderable)
    return buf.getvalue()


def table_width() -> int | None:
    """The width tables must fit: COLUMNS when set, else the terminal's; None when output goes to a pipe or file
    (the table then takes its natural width)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def use_bold() -> bool:
    # NO_COLOR counts when set and not empty (no-color.org), as rich reads it
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def grid_text(grid: Any, width: int | None, extra: list[str] | None = None) -> str:
    """A fitted table (render.grid), the note on what it left out, and any lines to follow."""
    from archcalc.render.calc import grid_text as text

    return text(grid, width, extra)


def write_grid(grid: Any, width: int | None, extra: list[str] | None = None) -> None:
    sys.stdout.write(grid_text(grid, width, extra))


def emit(text: str, output: Path | None, inputs: Sequence[str] = ()) -> None:
    """The command's result on stdout, or into the --output file (written whole, at the end: an error before
    this point creates nothing). An --output that is one of the command's `inputs` (the spec files it read) is
    refused: `calc net.yaml -o net.yaml` would replace the user's spec with the table."""
    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    refuse_overwriting(output, inputs)
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ArchcalcError(f"--output {output}: cannot write: {getattr(exc, 'strerror', None) or exc}") from None


def output_exists(output: Path) -> bool:
    """output.exists(), with what the system refuses (a name over 255 bytes, a loop of links) as a user error."""
    try:
        return output.exists()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name (only through the library, never argv)
        raise ArchcalcError(f"--output {output}: cannot write: {getattr(exc, 'strerror', None) or exc}") from None


def refuse_overwriting(output: Path, inputs: Sequence[str | None], what: str = "the spec") -> None:
    """An --output that is one of the command's inputs (the same file, by inode: links and other spellings of the
    path included) is refused, --force or not: the command would replace what it reads."""
    try:
        if not output.exists():
            return
        same = [given for given in inputs if given and Path(given).exists() and os.path.samefile(output, given)]
    except (OSError, ValueError) as exc:  # a name over 255 bytes or with a NUL, a loop of links, an unreadable folder
        raise ArchcalcError(f"--output {output}: cannot write: {getattr(exc, 'strerror', None) or exc}") from None
    if same:
        raise ArchcalcError(f"--output {output}: that is {what} this command reads ({same[0]}); write the output "
                            "to another file")


def table_style(output: Path | None) -> tuple[int | None, bool]:
    """(width, bold) for a table: the terminal's on stdout; into a file, its natural width and no bold."""
    return (table_width(), use_bold()) if output is None else (None, False)


def err_console() -> "Console":
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=200, emoji=False, markup=False, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """The one place user errors become a message on stderr and exit code 2 (no traceback).

    A located error is one line that starts with FILE:LINE:COL: (as compilers write them, the form editors and CI
    log parsers jump from); an error without a location says `error: `."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ArchcalcError as exc:
            located = isinstance(exc, SpecError) and exc.loc is not None
            err_console().print(str(exc) if located else f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # the system refused a file the user named (each command words its own first)
            where = f"{exc.filename}: " if exc.filename else ""
            err_console().print(f"error: {where}{exc.strerror or exc}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, ...]:
    from archcalc.core.spec import parse_input

    return parse_input(text, None)  # type: ignore[arg-type]


def load(spec: str, sets: list[str] | None = None, max_layers: int | None = None) -> "Spec":
    """The Spec for a SPEC argument: a path, or the name of a bundled spec; `sets` are --set NAME=VALUE."""
    from archcalc.core.spec import MAX_LAYERS, open_spec

    return open_spec(spec, parse_sets(sets), max_layers or MAX_LAYERS)


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """--set NAME=VALUE (repeatable) -> {NAME: VALUE}; the spec parser checks the names and evaluates the values."""
    out: dict[str, str] = {}
    for item in sets or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ArchcalcError(f"--set: expected NAME=VALUE (e.g. --set width_mult=0.75), got '{item}'")
        if name in out:
            raise ArchcalcError(f"--set: '{name}' is set twice ({name}={out[name]} and {item})")
        out[name] = value.strip()
    return out


def input_override(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return parse_shape(value)
    except SpecError as exc:
        raise ArchcalcError(f"--input: {exc.message}") from None


def size_option(option: str, text: str) -> int:
    """A byte size given on the command line (512MiB, 8GiB, 24GB)."""
    from archcalc.core.units import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise ArchcalcError(f"{option}: {exc}") from None


def count_option(option: str, text: str) -> int:
    """A count given on the command line (5M, 600M, 1.5G, 5e6)."""
    from archcalc.core.units import parse_count

    try:
        return parse_count(text)
    except ValueError as exc:
        raise ArchcalcError(f"{option}: {exc}") from None


def print_warnings(report: Any) -> None:
    if not report.warnings:
        return
    console = err_console()
    for w in report.warnings:  # FILE:LINE:COL: warning: ..., as compilers write them
        text = f"{w.loc}: warning: {w.layer}: {w.message}" if w.loc else f"warning: {w}"
        console.print(text, markup=False, soft_wrap=True)


def write_text(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def complete_spec(incomplete: str) -> list[str]:
    """Shell completion for SPEC: the bundled spec names, then spec files and folders, that start with what is
    typed."""
    import glob

    from archcalc.core.resolve import bundled

    names = [name for name in bundled() if name.startswith(incomplete)]
    paths = sorted(p + os.sep if os.path.isdir(p) else p for p in glob.glob(glob.escape(incomplete) + "*")
                   if os.path.isdir(p) or p.endswith((".yaml", ".yml")))
    return names + paths


MAX_BATCH = 1 << 20
SpecArg = Annotated[str, typer.Argument(metavar="SPEC", autocompletion=complete_spec,
                                        help="spec file, or the name of a bundled spec (archcalc zoo)")]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", min=1, max=MAX_BATCH, help="batch size (1 to 1,048,576)")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="element type for memory figures")]
ConvOpt = Annotated[Convention, typer.Option(
    "--convention", "-c", help="what a FLOP is: macs = one per multiply-accumulate; torch = FlopCounterMode's (2 per "
    "MAC of conv/linear/matmul, nothing else); fvcore = FlopCountAnalysis's (1 per MAC, plus norms and pooling); "
    "full = every arithmetic operation")]
MaxLayersOpt = Annotated[int, typer.Option("--max-layers", min=1, help="refuse specs that expand to more layers "
                                                                        "than this (blocks and repeats expanded)")]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f", help="output format")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE",
                                                   help="override a spec argument (repeatable): --set width_mult=0.75")]
InputOpt = Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x448x448")]
OptimizerOpt = Annotated[Optimizer, typer.Option("--optimizer", help="optimizer state for training memory "
                                                  "(momentum: SGD with momentum)")]
AmpOpt = Annotated[Amp | None, typer.Option("--amp", help="mixed precision: float32 master weights and optimizer "
                                            "state, activations and weight copies in bf16/fp16")]
FitOpt = Annotated[str | None, typer.Option("--fit", metavar="SIZE", help="use the largest batch whose memory fits "
                                            "SIZE (24GiB, 16GB); see --fit-for")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE", dir_okay=False, help="write the output (any --format) to FILE instead of "
    "stdout, replacing it; a table goes in without colour at its natural width")]
FitForOpt = Annotated[FitFor, typer.Option("--fit-for", help="which memory --fit sizes")]


class Columns(str, Enum):
    """calc --columns (render.calc.COLUMN_SETS)."""

    default = "default"
    training = "training"


ColumnsOpt = Annotated[Columns, typer.Option(
    "--columns", help="the per-layer columns: default, or training (saved for backward, backward FLOPs, what each "
    "layer holds at the training peak)")]
PlotOpt = Annotated[str | None, typer.Option(
    "--plot", metavar="FILE", help="also draw the figures to FILE, .png or .svg (the format from the suffix); needs "
    "matplotlib: pip install 'archcalc[plot]'")]


class Plotter(NamedTuple):
    """--plot FILE, checked: draws a picture with archcalc.plot.draw."""

    draw_module: Any
    path: Path

    def draw(self, function: str, data: Any) -> None:
        try:
            getattr(self.draw_module, function)(data, self.path)
        except OSError as exc:
            raise ArchcalcError(f"--plot: cannot write '{self.path}': {exc.strerror or exc}") from None


def plot_drawer(target: str | None) -> Plotter | None:
    """The Plotter for --plot FILE (checked before any work: the suffix, the folder, matplotlib), or None.

    Only here, and only with --plot, is matplotlib imported."""
    if target is None:
        return None
    path = Path(target)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ArchcalcError(f"--plot: '{target}': the file name must end in .png or .svg (the format follows the "
                            "suffix)")
    if not path.parent.is_dir():
        raise ArchcalcError(f"--plot: '{target}': no such folder '{path.parent}'")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ArchcalcError("--plot needs matplotlib: pip install 'archcalc[plot]'") from None
    from archcalc.plot import draw

    return Plotter(draw, path)
