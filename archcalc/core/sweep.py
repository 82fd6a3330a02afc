"""Design-space sweeps: the cartesian product of spec arguments, inputs and batch sizes, one row of totals per point.

Fast because each point re-evaluates only what its changed values touch:
- the spec file is read once; it is re-parsed once per distinct combination of `--set` values;
- each (arguments, input) pair is analyzed once, at batch 1;
- a batch size touches no shape: counts scale with it, and the two memory walks (inference peak, saved bytes) are
  affine in it, so each is walked at batch 1 and 2 and every other batch is exact integer arithmetic (a test
  checks every figure against an independent `analyze` at that batch);
- with many structures and an idle core, both cores analyze them (forked worker processes).
Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

from archcalc.core import expr
from archcalc.core.analyze import Report, analyze
from archcalc.core.errors import ArchcalcError, SpecError
from archcalc.core.settings import Settings
from archcalc.core.spec import Spec, display_path, load_merged, parse_input, parse_spec
from archcalc.core.training import MemoryLine, memory_line_of, training_flops

COLUMNS = ("params", "macs", "flops", "activation_bytes", "peak_inference_bytes", "training_bytes",
           "training_flops")
"""The figures of a row, in order; `--sort`, `--pareto` and `--where` use these names."""


class Point(NamedTuple):
    sets: tuple[tuple[str, str], ...]  # (name, value as given) for every --set
    input: tuple[int, ...] | None  # None: the spec's own input
    batch: int


class SweepRow(NamedTuple):
    point: Point
    input: tuple[int, ...]  # the input actually analyzed
    values: Mapping[str, int] | None  # COLUMNS -> value; None when the point failed
    error: str | None = None
    pareto: bool | None = None  # with --pareto: whether no other row is at least as good in every objective

    def get(self, column: str) -> int | None:
        return None if self.values is None else self.values[column]


# ---- parsing value lists ------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*(?:\.\.\s*(\d+)\s*)?$")

MAX_POINTS = 100_000
"""A design space larger than this is refused before it is expanded (`sweep --max-points` raises it)."""
MAX_JOBS = 64
"""Worker processes at most (`sweep -j`)."""


class IntRange(NamedTuple):
    """`a..b[..step]` as written, not expanded: its size is arithmetic, so 1..10**12 costs nothing until it is
    refused. Expanded (`values`) only after the whole design space has been counted."""

    start: int
    stop: int  # included
    step: int

    @property
    def size(self) -> int:
        return (self.stop - self.start) // self.step + 1

    def values(self) -> range:
        return range(self.start, self.stop + 1, self.step)


Values = Union[list[str], IntRange]


def count_of(values: Values) -> int:
    """How many values a list or a range holds (a Python int: a range may hold more than len() can return)."""
    return values.size if isinstance(values, IntRange) else len(values)


def expand(values: Values) -> list[str]:
    return [str(v) for v in values.values()] if isinstance(values, IntRange) else list(values)


def split_values(text: str) -> Values:
    """'0.5,0.75,1' -> three values; 'a..b[..step]' -> an IntRange of the integers a, a+step, ..., b (counted, not
    expanded: see `expand`); commas inside brackets (round_to(3, 2), [1, 2]) do not split."""
    match = _RANGE.match(text)
    if match:
        try:
            start, stop, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)
        except ValueError:  # beyond Python's 4,300-digit limit for int()
            raise ArchcalcError(f"range '{text[:40]}...': a bound is too long") from None
        if step < 1 or stop < start:
            raise ArchcalcError(f"range '{text}' must go up (a..b with a <= b, step >= 1)")
        return IntRange(start, stop, step)
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    if any(not p for p in parts):
        raise ArchcalcError(f"empty value in list '{text}'")
    return parts


def parse_set_axes(sets: Sequence[str] | None) -> list[tuple[str, Values]]:
    """['width_mult=0.5,0.75', 'depth=2..6'] -> [(name, values)] (ranges not expanded); a name given twice is an
    error."""
    axes: list[tuple[str, Values]] = []
    for item in sets or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ArchcalcError(f"--set: expected NAME=VALUES (e.g. --set width_mult=0.5,0.75,1 or depth=2..6), "
                                f"got '{item}'")
        if any(n == name for n, _ in axes):
            raise ArchcalcError(f"--set: '{name}' is set twice")
        axes.append((name, split_values(value)))
    return axes


def parse_inputs(text: str | None, spatial_axes: int = 2,
                 max_points: int = MAX_POINTS) -> list[tuple[int, ...] | None]:
    """'3x{128,160,224}' -> 3x128x128, 3x160x160, 3x224x224 (channels x one size: that size on every one of the
    spec's `spatial_axes`); several brace groups multiply; '3x224x224,3x320x320' also lists. More than
    `max_points` shapes is an error, found before any is made."""
    if text is None:
        return [None]
    groups = re.findall(r"\{([^{}]*)\}", text)
    if re.search(r"[{}]", re.sub(r"\{[^{}]*\}", "", text)):
        raise ArchcalcError(f"--input '{text}': a brace without its pair; write 3x{{128,160}} or 3x224x224,3x320x320")
    template = re.sub(r"\{[^{}]*\}", "{}", text)
    shapes: list[tuple[int, ...] | None] = []
    choices = [split_values(g) for g in groups]
    combos = math.prod(count_of(c) for c in choices)
    if combos > max_points:  # every combination makes at least one shape
        raise ArchcalcError(f"--input '{text}' lists {combos:,} inputs, more than --max-points {max_points:,}")
    for combo in itertools.product(*(expand(c) for c in choices)):
        filled = template.format(*combo)
        for part in filled.split(","):
            try:
                shape = parse_input(part.strip(), None)  # type: ignore[arg-type]
            except SpecError as exc:
                raise ArchcalcError(f"--input: {exc.message}") from None
            if len(shape) == 2 and spatial_axes > 1:
                shape = (shape[0],) + (shape[1],) * spatial_axes
            shapes.append(shape)
    return shapes


def parse_batches(text: str, max_points: int = MAX_POINTS) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; '1..32' -> 1, 2, ..., 32: a range counted before it is expanded (more than
    `max_points` batch sizes is an error)."""
    values = split_values(text)
    if isinstance(values, IntRange):
        if values.start < 1:
            raise ArchcalcError(f"--batch: expected positive integers like 1,8,64 or 1..32, got '{text}'")
        if values.size > max_points:
            raise ArchcalcError(f"--batch {text}: {values.size:,} batch sizes, more than --max-points "
                                f"{max_points:,}")
        return list(values.values())
    batches = []
    for part in values:
        if not part.isdigit() or int(part) < 1:
            raise ArchcalcError(f"--batch: expected positive integers like 1,8,64 or 1..32, got '{text}'")
        batches.append(int(part))
    return batches


def count_points(axes: Sequence[tuple[str, Values]], inputs: Sequence[tuple[int, ...] | None],
                 batches: Sequence[int]) -> int:
    """The size of the design space, counted without expanding it."""
    return math.prod(count_of(v) for _, v in axes) * len(inputs) * len(batches)


def points(axes: Sequence[tuple[str, Values]], inputs: Sequence[tuple[int, ...] | None],
           batches: Sequence[int], max_points: int = MAX_POINTS) -> list[Point]:
    """The cartesian product, in the order given (the last axis varies fastest: arguments, input, batch). It is
    counted first: more than `max_points` points is an error naming each axis, before any point is made."""
    total = count_points(axes, inputs, batches)
    if total > max_points:
        parts = [f"{count_of(v):,} {n}" for n, v in axes] + [f"{len(inputs):,} input" + "s" * (len(inputs) != 1),
                                                             f"{len(batches):,} batch size" + "s" * (len(batches) != 1)]
        raise ArchcalcError(f"the sweep has {total:,} points ({' x '.join(parts)}), more than --max-points "
                            f"{max_points:,}; narrow the ranges or raise --max-points")
    names = [n for n, _ in axes]
    result = []
    for combo in itertools.product(*(expand(v) for _, v in axes)):
        sets = tuple(zip(names, combo))
        for shape in inputs:
            for batch in batches:
                result.append(Point(sets, shape, batch))
    return result


# ---- evaluation ---------------------------------------------------------------------------------------------------


class _Structure(NamedTuple):
    """What a batch size does not change: one analysis at batch 1, and training memory and the inference peak as
    lines in the batch (core.training.MemoryLine: the same model calc, check and calc --fit use). The counts are
    per sample plus what a forward does once whatever the batch (Cost.macs_once, fvcore_once, full_once: Swin V2's
    position-bias MLP, std_conv's weight standardisation)."""

    input: tuple[int, ...]
    params: int
    macs: int
    flops: int
    training_flops: int
    activation_bytes: int  # per sample
    memory: MemoryLine
    macs_once: int = 0
    flops_once: int = 0
    training_flops_once: int = 0


def _structure(spec: Spec, shape: tuple[int, ...] | None, settings: Settings) -> _Structure:
    s = settings.replace(batch=1, input_shape=shape)
    report = analyze(spec, s)
    t = report.totals
    train = training_flops(report).total
    costs = [row.op.cost for row in report.rows if row.op is not None]
    if not any(c.macs_once or c.fvcore_once or c.full_once for c in costs):
        return _Structure(input=report.input, params=t.params, macs=t.macs, flops=t.flops, training_flops=train,
                          activation_bytes=t.activation_bytes, memory=memory_line_of(report, s))
    # Work done once per forward: a second analysis at batch 2 separates it from the per-sample counts (each is
    # per-sample x batch + once).
    two = analyze(spec, settings.replace(batch=2, input_shape=shape))
    train_two = training_flops(two).total
    return _Structure(input=report.input, params=t.params, macs=two.totals.macs - t.macs,
                      flops=two.totals.flops - t.flops, training_flops=train_two - train,
                      activation_bytes=t.activation_bytes, memory=memory_line_of(report, s),
                      macs_once=2 * t.macs - two.totals.macs, flops_once=2 * t.flops - two.totals.flops,
                      training_flops_once=2 * train - train_two)


def _at_batch(s: _Structure, batch: int) -> dict[str, int]:
    """Every figure at `batch`: counts scale (what a forward does once is added once); memory from the lines
    (exact integer arithmetic)."""
    return {
        "params": s.params, "macs": s.macs * batch + s.macs_once, "flops": s.flops * batch + s.flops_once,
        "activation_bytes": s.activation_bytes * batch,
        "peak_inference_bytes": s.memory.inference_peak(batch),
        "training_bytes": s.memory.training(batch),
        "training_flops": s.training_flops * batch + s.training_flops_once,
    }


class Sweep:
    """A spec read once, evaluated at many points."""

    def __init__(self, ref: str, settings: Settings | None = None) -> None:
        from archcalc.core.resolve import resolve_spec

        options = settings or Settings()
        path = resolve_spec(ref)
        self.display = display_path(path)
        self.data = load_merged(Path(path), self.display, ())
        self.options = options
        self._specs: dict[tuple[tuple[str, str], ...], Spec | str] = {}

    def spec(self, sets: tuple[tuple[str, str], ...]) -> Spec:
        """The parsed spec for these --set values (parsed once); a SpecError for a bad name or value."""
        if sets not in self._specs:
            try:
                self._specs[sets] = parse_spec(self.data, self.display, dict(sets))
            except SpecError as exc:
                self._specs[sets] = str(exc)
        spec = self._specs[sets]
        if isinstance(spec, str):
            raise SpecError(None, spec)
        return spec

    @property
    def name(self) -> str:
        """The spec's `name` (what titles show, as calc's do), or its path where the spec does not parse without
        --set values."""
        try:
            return self.spec(()).name
        except SpecError:
            return self.display

    @property
    def spatial_axes(self) -> int:
        """How many spatial axes the spec's own input has (for --input 3x{128,160})."""
        return len(self.spec(()).input) - 1

    def check_names(self, names: Iterable[str]) -> None:
        """Fail early (exit 2) on an --set name the spec does not declare, before any point is evaluated."""
        declared = parse_spec(self.data, self.display).args
        for name in names:
            if name not in declared:
                from archcalc.core.errors import did_you_mean

                hint = did_you_mean(name, declared) if declared else "; the spec declares no args"
                raise ArchcalcError(f"{self.display}: --set {name}: the spec has no argument '{name}'{hint}")

    def structure(self, sets: tuple[tuple[str, str], ...], shape: tuple[int, ...] | None) -> _Structure | str:
        try:
            return _structure(self.spec(sets), shape, self.options)
        except SpecError as exc:
            return str(exc)

    def run(self, pts: Sequence[Point], progress: Callable[[int], None] | None = None,
            jobs: int | None = None) -> list[SweepRow]:
        """Evaluate every point, in order. A point that fails (a shape that stops fitting) is a row with its
        error. `progress(n)` is told how many points are done; `jobs`: worker processes (default: both cores
        when there are enough structures to pay for starting them)."""
        keys = list(dict.fromkeys((p.sets, p.input) for p in pts))
        structures = self._evaluate(keys, progress, pts, jobs)
        rows = []
        for p in pts:
            s = structures[(p.sets, p.input)]
            if isinstance(s, str):
                rows.append(SweepRow(p, p.input or (), None, s))
            else:
                rows.append(SweepRow(p, s.input, _at_batch(s, p.batch)))
        return rows

    def _evaluate(self, keys: list[Any], progress: Callable[[int], None] | None, pts: Sequence[Point],
                  jobs: int | None) -> dict[Any, _Structure | str]:
        per_key = len(pts) // max(len(keys), 1)
        if jobs is not None and not 1 <= jobs <= MAX_JOBS:
            raise ArchcalcError(f"jobs: {jobs:,} worker processes; give 1 to {MAX_JOBS}")
        if jobs is None:
            jobs = 2 if len(keys) >= _PARALLEL_FROM and _idle_cores() >= 1 else 1
        out: dict[Any, _Structure | str] = {}
        if jobs <= 1 or len(keys) < 2 or not _can_fork():
            for i, key in enumerate(keys):
                out[key] = self.structure(*key)
                if progress:
                    progress((i + 1) * per_key)
            return out
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        global _ACTIVE
        _ACTIVE = self  # inherited by the forked workers: nothing is pickled but keys and results
        chunks = [keys[i::jobs * 8] for i in range(jobs * 8)]  # small chunks, so progress moves
        done = 0
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for chunk, results in zip(chunks, pool.map(_work, chunks)):
                out.update(zip(chunk, results))
                done += len(chunk)
                if progress:
                    progress(done * per_key)
        _ACTIVE = None
        return out


_PARALLEL_FROM = 48  # structures; below this, starting workers costs more than it saves
_ACTIVE: Sweep | None = None


def _idle_cores() -> float:
    """Cores no other process is using (by the 1-minute load average, which counts this process too): a second
    worker pays only when it gets a core of its own; on a machine busy with other jobs it only adds contention."""
    try:
        return (os.cpu_count() or 1) - os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return 0.0


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _work(chunk: list[Any]) -> list[_Structure | str]:
    assert _ACTIVE is not None
    return [_ACTIVE.structure(*key) for key in chunk]


# ---- selecting rows -----------------------------------------------------------------------------------------------


def where(rows: Sequence[SweepRow], condition: str) -> list[SweepRow]:
    """Keep the rows for which `condition` holds ('params < 5e6 and macs < 600e6'), evaluated by the safe
    evaluator with the row's figures, its --set values, `batch` and the input's sizes (`channels`, `height`,
    `width`, `resolution` = the last size) as names. Failed rows are dropped."""
    clauses = parse_where(condition)
    kept = []
    for row in rows:
        if row.values is None:
            continue
        names = _names(row)
        if all(_holds(c, names, condition) for c in clauses):
            kept.append(row)
    return kept


_COMPARE = re.compile(r"(<=|>=|==|!=|<|>)")


def parse_where(condition: str) -> list[tuple[str, str, str]]:
    """'params < 5e6 and macs < 600e6' -> [(left, operator, right)]; an ArchcalcError when it is not that."""
    clauses = []
    for part in re.split(r"\band\b|&&", condition):
        pieces = _COMPARE.split(part)
        if len(pieces) != 3 or not pieces[0].strip() or not pieces[2].strip():
            raise ArchcalcError(f"--where: each condition compares two expressions (params < 5e6; join with "
                                f"'and'), not '{part.strip()}'")
        clauses.append((pieces[0], pieces[1], pieces[2]))
    return clauses


def _names(row: SweepRow) -> dict[str, object]:
    names: dict[str, object] = dict(row.values or {})
    for name, value in row.point.sets:
        try:
            names[name] = expr.evaluate(value, {})
        except expr.ExprError:
            names[name] = value
    names["batch"] = row.point.batch
    shape = row.input
    names.update(channels=shape[0], resolution=shape[-1])
    if len(shape) >= 3:
        names.update(height=shape[-2], width=names.get("width", shape[-1]))
    return names


def _holds(clause: tuple[str, str, str], names: Mapping[str, object], condition: str) -> bool:
    left, op, right = clause
    try:
        a, b = expr.evaluate(left, names), expr.evaluate(right, names)
    except expr.ExprError as exc:
        raise ArchcalcError(f"--where '{condition}': {exc}") from None
    if not all(isinstance(v, (int, float)) for v in (a, b)):
        raise ArchcalcError(f"--where '{condition}': compares numbers only")
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]  # type: ignore[operator]


POINT_NAMES = ("batch", "channels", "height", "width", "resolution")
"""Names a row has besides COLUMNS and its --set names (for --where and --pareto)."""


def pareto(rows: Sequence[SweepRow], objectives: Sequence[str], set_names: Sequence[str] = ()) -> list[SweepRow]:
    """Mark each row Pareto-optimal or not. Objectives are minimized; a leading '-' maximizes one
    (`macs,-params`: the most parameters for the MACs). A row is dominated when another is no worse in every
    objective and better in one; rows that tie in all are both optimal. Failed rows are never optimal."""
    known = (*COLUMNS, *POINT_NAMES, *set_names)
    signs = []
    for objective in objectives:
        name = objective.lstrip("-").strip()
        if name not in known:
            from archcalc.core.errors import did_you_mean

            raise ArchcalcError(f"--pareto: unknown column '{name}'{did_you_mean(name, known)}")
        signs.append((name, -1 if objective.strip().startswith("-") else 1))
    good = [r for r in rows if r.values is not None]
    keys = []
    for r in good:
        names = _names(r)
        keys.append(tuple(sign * names[name] for name, sign in signs))  # type: ignore[operator]
    optimal = set()
    order = sorted(range(len(good)), key=lambda i: keys[i])  # a row can only be dominated by one before it
    front: list[tuple[Any, ...]] = []
    for i in order:
        k = keys[i]
        if not any(f != k and all(a <= b for a, b in zip(f, k)) for f in front):
            optimal.add(i)
            front.append(k)
    marks = {id(r): (i in optimal) for i, r in enumerate(good)}
    return [r._replace(pareto=marks.get(id(r), False)) for r in rows]


def sort_rows(rows: Sequence[SweepRow], column: str, descending: bool = False) -> list[SweepRow]:
    if column not in COLUMNS and column not in ("batch",):
        from archcalc.core.errors import did_you_mean

        raise ArchcalcError(f"--sort: unknown column '{column}'{did_you_mean(column, (*COLUMNS, 'batch'))}")
    ok = [r for r in rows if r.values is not None]
    failed = [r for r in rows if r.values is None]
    key: Callable[[SweepRow], Any] = ((lambda r: r.point.batch) if column == "batch" else
                                      (lambda r: r.values[column]))  # type: ignore[index]
    return sorted(ok, key=key, reverse=descending) + failed


def report_at(sweep: Sweep, point: Point) -> Report:
    """The full Report at one point (what `calc` with the same --set, --input and --batch computes)."""
    return analyze(sweep.spec(point.sets), sweep.options.replace(batch=point.batch, input_shape=point.input))


class Query(NamedTuple):
    """What `sweep` keeps and how it orders the rows: --where, --pareto (objectives), --pareto-only, --sort, --desc."""

    where: str | None = None
    objectives: tuple[str, ...] = ()
    pareto_only: bool = False
    sort: str | None = None
    descending: bool = False

    @classmethod
    def of(cls, where: str | None = None, pareto: str | None = None, pareto_only: bool = False,
           sort: str | None = None, descending: bool = False) -> Query:
        """From the command line's text: `pareto` is a comma-separated objective list ('macs,-params')."""
        objectives = tuple(o.strip() for o in pareto.split(",") if o.strip()) if pareto else ()
        return cls(where, objectives, pareto_only, sort, descending)

    def check(self, set_names: Sequence[str]) -> None:
        """Reject an unknown column or a malformed condition before any point is evaluated."""
        if self.objectives:
            pareto([], self.objectives, set_names)
        if self.sort is not None:
            sort_rows([], self.sort)
        if self.where is not None:
            parse_where(self.where)

    def apply(self, rows: Sequence[SweepRow], set_names: Sequence[str]) -> list[SweepRow]:
        """The rows kept (--where), marked (--pareto, keeping only the optimal with --pareto-only), then sorted."""
        out = list(rows)
        if self.where is not None:
            out = where(out, self.where)
        if self.objectives:
            out = pareto(out, self.objectives, set_names)
            if self.pareto_only:
                out = [r for r in out if r.pareto]
        if self.sort is not None:
            out = sort_rows(out, self.sort, self.descending)
        return out


class Plan(NamedTuple):
    """A sweep ready to run: the spec read once, its points, and what is kept of them; checked before any work."""

    sweep: Sweep
    points: list[Point]
    set_names: list[str]
    query: Query

    def run(self, progress: Callable[[int], None] | None = None, jobs: int | None = None) -> list[SweepRow]:
        """Every point evaluated, then selected and ordered by the query."""
        return self.query.apply(self.sweep.run(self.points, progress, jobs), self.set_names)


def plan(ref: str, sets: Sequence[str] | None = None, inputs: str | None = None, batches: str = "1",
         settings: Settings | None = None, query: Query | None = None, max_points: int = MAX_POINTS) -> Plan:
    """`archcalc sweep`'s plan: the spec `ref` at every point of --set value lists x --input x --batch (their
    command-line texts), with `query` checked (an unknown name or column fails here, before the work). A design
    space of more than `max_points` points is refused before it is expanded."""
    runner = Sweep(ref, settings)
    axes = parse_set_axes(sets)
    runner.check_names(name for name, _ in axes)
    pts = points(axes, parse_inputs(inputs, runner.spatial_axes, max_points), parse_batches(batches, max_points),
                 max_points)
    query = query or Query()
    set_names = [name for name, _ in axes]
    query.check(set_names)
    return Plan(runner, pts, set_names, query)
