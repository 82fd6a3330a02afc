"""`archcalc profile`: time a spec's model on a device and set the figures beside the analytic prediction.

Thin: parse options, call archcalc.torch.profile.driver.run_profile, render with archcalc.render.profile. The
driver is imported only when the command runs, so `archcalc calc` stays torch-free.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any

import typer

from archcalc.cli.options import (
    PROFILE_F32,
    InputOpt,
    Optimizer,
    PlotOpt,
    ProfileDType,
    SetOpt,
    SpecArg,
    TableOrJson,
    err_console,
    handle_errors,
    input_override,
    load,
    out_console,
    plot_drawer,
    table_width,
    use_bold,
    write_grid,
)
from archcalc.core.errors import ArchcalcError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"



def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,64' -> (1, 8, 64)."""
    try:
        batches = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ArchcalcError(f"--batch: expected comma-separated positive integers like 1,8,64, got '{text}'") from None
    if not batches or min(batches) < 1:
        raise ArchcalcError(f"--batch: expected comma-separated positive integers like 1,8,64, got '{text}'")
    return batches


MAX_THREADS = 4096  # torch.set_num_threads takes a C int; far more than any machine's cores


def parse_threads(text: str) -> tuple[int | str, ...]:
    """'1,2,4' -> (1, 2, 4); 'auto' stays 'auto' (the driver resolves it from the machine's load)."""
    bad = f"--threads: expected comma-separated positive integers like 1,2,4, or auto, got '{text}'"
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "auto":
            out.append(part)
        elif part.isascii() and part.isdigit() and 1 <= int(part) <= MAX_THREADS:
            out.append(int(part))
        elif part.isascii() and part.isdigit() and int(part) > MAX_THREADS:
            raise ArchcalcError(f"--threads: {part} is more than {MAX_THREADS:,} threads")
        else:
            raise ArchcalcError(bad)
    return tuple(out)


@handle_errors
def profile(
    spec: SpecArg,
    device: Annotated[Device, typer.Option("--device", help="where to run; auto: cuda when available")]
    = Device.auto,
    batch: Annotated[str, typer.Option("--batch", "-b", help="batch sizes, comma-separated: 1,8,64")] = "1",
    threads: Annotated[str, typer.Option("--threads", "-t", help="CPU threads (torch.set_num_threads), "
                                         "comma-separated for a sweep: 1,2,4; auto: the physical cores not busy. "
                                         "Default 1: the steadiest figures on a shared machine "
                                         "(docs/profile.md#threads)")] = "1",
    dtype: Annotated[ProfileDType, typer.Option("--dtype", help="element type of parameters and inputs")]
    = PROFILE_F32,
    input: InputOpt = None,
    train: Annotated[bool, typer.Option("--train", help="time forward + backward + optimizer step")] = False,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="optimizer for --train, as training memory "
                                                 "counts it (sgd: no momentum; momentum: SGD with momentum "
                                                 "0.9)")] = Optimizer.sgd,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory format")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (compiles in warm-up; "
                                          "no per-layer breakdown)")] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="also time CUDA-graph replay, separating "
                                              "launch overhead")] = False,
    warmup: Annotated[float | None, typer.Option("--warmup", min=0, max=3600, help="seconds of untimed iterations "
                                                 "before "
                                                 "timing (at least one runs); default: a tenth of each point's "
                                                 "share of the budget, at most 1 s")] = None,
    budget: Annotated[float, typer.Option("--budget", min=0.01, max=86400, help="seconds for the whole run once "
                                          "torch is "
                                          "loaded (model build, ceiling, warm-up, timing and the passes asked "
                                          "for), shared equally by the batch sizes and thread counts; timing "
                                          "stops earlier once IQR/median <= 2%")] = 5.0,
    memory: Annotated[bool | None, typer.Option("--memory/--no-memory", help="measure peak memory (CUDA: "
                                                "allocator statistics, on by default; CPU: one step under torch's "
                                                "profiler, off by default)", show_default=False)] = None,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="per-layer breakdown (one pass of "
                                         "torch's profiler); on with --plot, which draws the roofline")] = False,
    force: Annotated[bool, typer.Option("--force", help="run even if predicted memory exceeds available memory")]
    = False,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f", help="output format; json is always a list "
                                            "with one object per (threads, batch) point")] = TableOrJson.table,
    set_: SetOpt = None,
    plot: PlotOpt = None,
) -> None:
    """Measure latency, throughput, achieved FLOP rate, memory and per-layer time against the analytic model."""
    from archcalc.render.profile import profile_json, profile_notes, profile_tables
    from archcalc.torch.profile.driver import Options, run_profile

    for option, seconds in (("--budget", budget), ("--warmup", warmup)):
        if seconds is not None and seconds != seconds:  # nan passes typer's range check (every comparison is false)
            raise ArchcalcError(f"{option}: expected a number of seconds, not nan")
    plotter = plot_drawer(plot)
    layers = layers or plotter is not None  # the roofline places each layer
    batches = parse_batches(batch)
    thread_counts = parse_threads(threads)
    loaded = load(spec, set_)
    options = Options(device=_device(device), batches=batches, threads=thread_counts, dtype=dtype.value,
                      train=train, optimizer=optimizer.value, channels_last=channels_last, compile=compile,
                      cuda_graphs=cuda_graphs, warmup_s=warmup, budget_s=budget, force=force,
                      layers=layers, memory=memory, input_shape=input_override(input))
    with _progress([f"threads {t}, batch {b}" for t in thread_counts for b in batches]) as update:
        results = run_profile(loaded, options, update)
    if plotter is not None:
        from archcalc.plot.data import roofline

        plotter.draw("roofline", [roofline(r) for r in results])
    if fmt is TableOrJson.json:
        sys.stdout.write(profile_json(results) + "\n")
        return
    width = table_width()
    for grid in profile_tables(results, width, use_bold()):
        write_grid(grid, width)
    console = out_console()
    for line in profile_notes(results):
        console.print(line, markup=False)


def _device(device: Device) -> str:
    if device is not Device.auto:
        return device.value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _progress:
    """A rich progress bar on stderr, one task per (threads, batch) point; a no-op when stderr is not a terminal."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def __enter__(self) -> Any:
        console = err_console()
        if not console.is_terminal:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.fields[point]}"), BarColumn(),
                            TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True)
        self.tasks = [self.bar.add_task("waiting", total=1.0, point=label) for label in self.labels]
        self.bar.__enter__()

        def update(index: int, stage: str, fraction: float) -> None:
            self.bar.update(self.tasks[index], description=stage, completed=fraction)

        return update

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "bar"):
            self.bar.__exit__(*exc)
