"""matplotlib rendering of archcalc.plot.data's series (Agg backend, no display). Imported only when `--plot` is
given: the one module that imports matplotlib (ruff's TID253 and an import-linter contract keep it that way).
Drawing never computes a figure; it places the series data.py made."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "archcalc"  # SVG element ids from a fixed salt: the same series, the same file

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from archcalc.core.units import nbytes, si  # noqa: E402
from archcalc.plot.data import Axis, CalcPlot, ComparePlot, Roofline, SweepPlot, digest  # noqa: E402

DPI = 100
_BAR = "#4C72B0"
_PEAK = "#C44E52"
_SAVED = "#DD8452"
_LIGHT = "#DDDDDD"
MAX_HELD = 5  # layers named at the training peak (the largest; the rest counted)
_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B"))


def save(fig: Any, path: Path, plot: Any) -> None:
    """PNG files carry the series' digest (data.digest) as a text chunk, `archcalc-series`; SVG files carry no
    date, so the same series draw the same file."""
    png = path.suffix.lower() == ".png"
    metadata = {"archcalc-series": digest(plot)} if png else {"Date": None}
    fig.savefig(path, dpi=DPI, format="png" if png else "svg", bbox_inches="tight", metadata=metadata)
    plt.close(fig)


def _unit(largest: float) -> tuple[int, str]:
    return next(((size, name) for size, name in _UNITS if largest >= size), (1, "B"))


def _tick(v: float, _: object = None) -> str:
    """A count tick: '100', '10 K', '1 M', '2.5 G' (si's three digits without trailing zeros)."""
    if v < 1:
        return f"{v:g}"
    text = si(round(v))
    number, _sep, suffix = text.partition(" ")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {suffix}".strip()


def _count_axis(ax: Any) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))


def _bytes_log_axis(ax: Any) -> None:
    ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: nbytes(round(v)) if v >= 1 else ""))


def _extent(artist: Any) -> Any:
    """An artist's box in display space (the figure drawn once first)."""
    canvas = artist.figure.canvas
    return artist.get_window_extent(canvas.get_renderer())


def _use_log(values: Sequence[int]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > 100


def _bars(ax: Any, values: Sequence[int], ylabel: str, as_bytes: bool) -> None:
    xs = range(len(values))
    log = _use_log(values)
    size, unit = _unit(max(values, default=0)) if as_bytes and not log else (1, "")
    ax.bar(xs, [max(v, 0) / size for v in values], width=0.8, color=_BAR, log=log)
    ax.set_ylabel(ylabel + (" (log)" if log else f" ({unit})" if unit else ""))
    if log:
        positive = [v for v in values if v > 0]
        ax.set_ylim(min(positive) / 2, max(positive) * 2)
    if as_bytes and log:
        _bytes_log_axis(ax)
    elif not as_bytes:
        _count_axis(ax)
    ax.grid(axis="y", color=_LIGHT, linewidth=0.6)
    ax.set_axisbelow(True)


def _label_x(ax: Any, axis: Axis, show: bool) -> None:
    """Name each position, or each group (block) at its centre with separators between groups."""
    labels = axis.labels
    ax.set_xlim(-0.6, len(axis.names) - 0.4)
    ax.set_xticks([(g.start + g.stop - 1) / 2 for g in labels])
    many = len(labels) > 12 or max((len(g.name) for g in labels), default=0) > 12
    ax.set_xticklabels([_short(g.name) for g in labels] if show else [], rotation=90 if many else 0, fontsize=7)
    ax.tick_params(axis="x", length=0 if axis.groups else 3)
    if axis.groups:
        for i, g in enumerate(labels):
            if i % 2:
                ax.axvspan(g.start - 0.5, g.stop - 0.5, color="#F2F2F2", zorder=0, linewidth=0)


def _plain(text: str) -> str:
    """User text (a spec's name, a layer's, a --set value) drawn as written: matplotlib reads a pair of `$` as
    math (a spec named "$x^$" made its parser raise), so each is escaped."""
    return text.replace("$", r"\$")


def _short(name: str, width: int = 28) -> str:
    return _plain(name if len(name) <= width else "…" + name[-(width - 1):])


def calc(plot: CalcPlot, path: Path) -> None:
    bars, tl = plot.bars, plot.timeline
    shared = bars.axis.names == tl.axis.names  # no --depth: one position per layer in every panel
    if plot.training is None:
        fig, axes = plt.subplots(5, 1, figsize=(12, 15), sharex=shared,
                                 gridspec_kw={"height_ratios": [1, 1, 1, 1.9, 1.1],
                                              "hspace": 0.12 if shared else 0.45})
    else:  # the training step below, on its own axis (forward, loss, backward, optimizer)
        fig = plt.figure(figsize=(12, 15.6))
        grid = fig.add_gridspec(7, 1, height_ratios=[0.8, 0.8, 0.8, 1.5, 0.9, 0.5, 1.7],
                                hspace=0.12 if shared else 0.45)
        top = fig.add_subplot(grid[0])
        axes = [top] + [fig.add_subplot(grid[i], sharex=top if shared else None) for i in range(1, 5)]
        _training(fig.add_subplot(grid[6]), plot.training)
    fig.subplots_adjust(top=0.95)
    fig.suptitle(_plain(plot.title), fontsize=12, y=0.985)
    _bars(axes[0], bars.macs, "MACs per layer", as_bytes=False)
    _bars(axes[1], bars.params, "parameters per layer", as_bytes=False)
    _bars(axes[2], bars.activation_bytes, "output activation bytes", as_bytes=True)
    for ax in axes[:3]:
        _label_x(ax, bars.axis, show=(ax is axes[2]) and not shared)
    _memory(axes[3], tl)
    _saved(axes[4], tl)
    for ax in axes[3:]:
        _label_x(ax, tl.axis, show=ax is axes[4])
    axes[4].set_xlabel("layer (execution order)" + ("; blocks labelled" if tl.axis.groups else ""))
    save(fig, path, plot)


def _memory(ax: Any, tl: Any) -> None:
    size, unit = _unit(max([tl.start, *tl.alive]))
    xs = list(range(len(tl.alive)))
    ys = [v / size for v in tl.alive]
    ax.fill_between(xs, ys, step="mid", color=_BAR, alpha=0.25, linewidth=0)
    ax.step(xs, ys, where="mid", color=_BAR, linewidth=1.2)
    ax.set_ylabel(f"activations alive while\neach layer runs ({unit})")
    peak_x = max(tl.peak_index, 0)
    ax.axvline(peak_x, color=_PEAK, linestyle="--", linewidth=1)
    ax.plot([peak_x], [tl.peak / size], "o", color=_PEAK)
    shown = tl.peak_tensors[:6]
    rest = len(tl.peak_tensors) - len(shown)
    where = tl.axis.names[tl.peak_index] if tl.peak_index >= 0 else "the inputs"
    lines = [f"inference peak: {nbytes(tl.peak)} of activations while {_short(where, 40)} runs",
             f"(+ {nbytes(tl.constant)} of parameters and buffers, alive throughout); alive at the peak:"]
    lines += [f"  {_short(name, 44)}  {nbytes(b)}" for name, b in shown]
    if rest:
        lines.append(f"  … and {rest} more ({nbytes(sum(b for _, b in tl.peak_tensors[6:]))})")
    # headroom above the curve for the note: the curve keeps the lower part of the panel, the note the upper
    ax.set_ylim(0, max(ys, default=1) / max(0.35, 1 - 0.055 * len(lines) - 0.06))
    right = peak_x < len(xs) / 2
    ax.text(0.99 if right else 0.01, 0.97, "\n".join(lines), transform=ax.transAxes, fontsize=8,
            ha="right" if right else "left", va="top", family="monospace", multialignment="left",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": _PEAK, "alpha": 0.9})
    ax.grid(axis="y", color=_LIGHT, linewidth=0.6)


def _training(ax: Any, tt: Any) -> None:
    """The training step: bytes alive over the forward, the loss, backward and the optimizer step, phases shaded
    and named, the peak marked with its phase and op."""
    size, unit = _unit(max(tt.running))
    xs = list(range(len(tt.running)))
    ys = [v / size for v in tt.running]
    ax.fill_between(xs, ys, step="mid", color=_SAVED, alpha=0.25, linewidth=0)
    ax.step(xs, ys, where="mid", color=_SAVED, linewidth=1.2)
    ax.axhline(tt.before / size, color="#777777", linestyle=":", linewidth=1)
    ax.set_ylabel(f"alive in one training\nstep ({unit})")
    ax.axvline(tt.peak_index, color=_PEAK, linestyle="--", linewidth=1)
    ax.plot([tt.peak_index], [tt.peak / size], "o", color=_PEAK)
    shown = tt.holders[:MAX_HELD]
    rest = len(tt.holders) - len(shown)
    lines = [f"training peak ({tt.optimizer}, a later step): {nbytes(tt.peak)} at the {_short(tt.where, 48)}",
             f"(first step: {nbytes(tt.first_peak)}; dotted: {nbytes(tt.before)} alive before the step)",
             "held at the peak:"]
    lines += [f"  {_short(name, 44)}  {nbytes(b)}" for name, b in shown]
    if rest:
        lines.append(f"  … and {rest} more ({nbytes(sum(b for _, b in tt.holders[MAX_HELD:]))})")
    ax.set_ylim(0, max(ys, default=1) / max(0.35, 1 - 0.055 * len(lines) - 0.06))
    right = tt.peak_index < len(xs) / 2
    ax.text(0.99 if right else 0.01, 0.97, "\n".join(lines), transform=ax.transAxes, fontsize=8,
            ha="right" if right else "left", va="top", family="monospace", multialignment="left",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": _PEAK, "alpha": 0.9})
    _label_x(ax, tt.axis, show=True)
    for g in tt.phases:
        if g.start:
            ax.axvline(g.start - 0.5, color="#999999", linewidth=0.6)
        if not tt.axis.groups and g.stop - g.start > 1:
            ax.text((g.start + g.stop - 1) / 2, 1.01, g.name, transform=ax.get_xaxis_transform(), fontsize=8,
                    ha="center", va="bottom", color="#555555")
    ax.set_xlabel("training step: forward ops, the loss, backward ops (reverse order), the optimizer step"
                  + ("; phases labelled" if tt.axis.groups else ""))
    ax.grid(axis="y", color=_LIGHT, linewidth=0.6)


def _saved(ax: Any, tl: Any) -> None:
    size, unit = _unit(max(tl.saved, default=0))
    xs = list(range(len(tl.saved)))
    ys = [v / size for v in tl.saved]
    ax.fill_between(xs, ys, step="post", color=_SAVED, alpha=0.25, linewidth=0)
    ax.step(xs, ys, where="post", color=_SAVED, linewidth=1.2)
    total = tl.saved[-1] if tl.saved else 0
    ax.set_ylabel(f"saved for backward ({unit})")
    ax.text(0.01, 0.95, f"training forward: saved bytes accumulate to {nbytes(total)}", transform=ax.transAxes,
            fontsize=8, va="top", bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": _SAVED, "alpha": 0.9})
    ax.set_ylim(0, max(ys, default=1) * 1.15 or 1)
    ax.grid(axis="y", color=_LIGHT, linewidth=0.6)


# ---- labels that do not overlap -----------------------------------------------------------------------------------

_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _alignment(dx: int, dy: int) -> tuple[str, str]:
    return ({1: "left", 0: "center", -1: "right"}[dx], {1: "bottom", 0: "center", -1: "top"}[dy])


def place_labels(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float = 8,
                 avoid: Sequence[Any] = (), radii: Sequence[float] | None = None,
                 others: Sequence[tuple[float, float]] = ()) -> list[Any]:
    """Annotate each (x, y, text) just outside its marker (`radii`, in points): at the first of eight directions,
    then farther out with a leader line, where it overlaps no label placed so far, no marker and nothing in `avoid`
    (extents in display space), inside the axes; failing that, where it covers only the edge of a marker (never a
    centre or a label). The largest markers are labelled first. A label with no free place is left out. Returns
    the annotations placed. `others`: unlabelled markers (data coordinates) a label must not cover either."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72
    radii = list(radii) if radii is not None else [3.0] * len(points)
    labels = list(avoid)
    markers, centres = [], []
    for (x, y, _), r in zip(points, radii):
        px, py = ax.transData.transform((x, y))
        markers.append(matplotlib.transforms.Bbox.from_extents(px - r * scale, py - r * scale, px + r * scale,
                                                               py + r * scale))
        c = min(r, 4.0) * scale
        centres.append(matplotlib.transforms.Bbox.from_extents(px - c, py - c, px + c, py + c))
    for x, y in others:
        px, py = ax.transData.transform((x, y))
        markers.append(matplotlib.transforms.Bbox.from_extents(px - 4, py - 4, px + 4, py + 4))
        centres.append(markers[-1])
    frame = ax.get_window_extent(renderer)
    placed = []
    for i in sorted(range(len(points)), key=lambda i: -radii[i]):
        x, y, text = points[i]
        r = radii[i]
        note = None
        for obstacles in (markers, centres):
            for gap in (3, 12, 24, 40):
                for dx, dy in _DIRECTIONS:
                    d = (r + gap) * (0.75 if dx and dy else 1)  # the diagonal: about the same distance
                    ha, va = _alignment(dx, dy)
                    note = ax.annotate(_plain(text), (x, y), xytext=(dx * d, dy * d), textcoords="offset points", ha=ha,
                                       va=va, fontsize=fontsize,
                                       arrowprops={"arrowstyle": "-", "color": "#666666", "linewidth": 0.7,
                                                   "shrinkA": 0, "shrinkB": r} if gap > 3 else None)
                    box = note.get_window_extent(renderer).expanded(1.04, 1.1)
                    inside = (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                              and box.y1 <= frame.y1)
                    if inside and not any(box.overlaps(t) for t in [*labels, *obstacles]):
                        break
                    note.remove()
                    note = None
                if note is not None:
                    break
            if note is not None:
                break
        if note is not None:
            labels.append(note.get_window_extent(renderer).expanded(1.04, 1.1))
            placed.append(note)
    return placed


# ---- compare ------------------------------------------------------------------------------------------------------

def compare(plot: ComparePlot, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 7))
    pts = plot.points
    largest = max(p.peak_bytes for p in pts)
    sizes = [30 + 1200 * p.peak_bytes / largest for p in pts]
    ax.scatter([p.macs for p in pts], [p.params for p in pts], s=sizes, alpha=0.55, color=_BAR, edgecolor="black",
               linewidth=0.6)
    _log_log(ax, [p.macs for p in pts], [p.params for p in pts])
    ax.set_xlabel("MACs per forward (multiply-accumulates, log)")
    ax.set_ylabel("parameters (log)")
    ax.set_title(_plain(plot.title), fontsize=11)
    ax.grid(which="major", color=_LIGHT, linewidth=0.6)
    for p_ in sorted({min(pts, key=lambda p: p.peak_bytes), max(pts, key=lambda p: p.peak_bytes)},
                     key=lambda p: p.peak_bytes):
        ax.scatter([], [], s=30 + 1200 * p_.peak_bytes / largest, color=_BAR, alpha=0.55, edgecolor="black",
                   label=f"peak {nbytes(p_.peak_bytes)}")
    ax.legend(title="inference peak memory", loc="lower right", labelspacing=2.2, borderpad=1.2, handletextpad=2,
              fontsize=8, title_fontsize=8)
    fig.canvas.draw()
    placed = place_labels(ax, [(p.macs, p.params, p.name) for p in pts], avoid=[_extent(ax.get_legend())],
                          radii=[s_ ** 0.5 / 2 for s_ in sizes])
    missing = len(pts) - len(placed)
    if missing:
        ax.text(0.01, 0.01, f"{missing} label{'s' if missing > 1 else ''} left out where points crowd",
                transform=ax.transAxes, fontsize=7, color="grey")
    save(fig, path, plot)


def _log_log(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Log scales on both axes, padded for the markers; an axis spanning less than a decade gets ticks at 1, 2
    and 5 of each decade, so it shows more than one."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for setter, axis, values in ((ax.set_xlim, ax.xaxis, xs), (ax.set_ylim, ax.yaxis, ys)):
        positive = [v for v in values if v > 0]
        if positive:
            setter(min(positive) / 2.5, max(positive) * 2.5)
            if max(positive) / min(positive) < 10:
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(_tick))
        axis.set_minor_formatter(NullFormatter())


# ---- sweep --------------------------------------------------------------------------------------------------------

_SWEEP_LABELS = {"params": ("parameters", False), "macs": ("MACs per forward (batch included)", False),
                 "flops": ("FLOPs per forward", False), "activation_bytes": ("activation bytes", True),
                 "peak_inference_bytes": ("inference peak memory", True),
                 "training_bytes": ("training memory (one step)", True), "training_flops": ("training FLOPs", False)}


def sweep(plot: SweepPlot, path: Path) -> None:
    fig = plt.figure(figsize=(15, 8))
    grid = fig.add_gridspec(2, 3, hspace=0.35, wspace=0.32)
    fig.suptitle(_plain(plot.title), fontsize=12)
    panels = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    from archcalc.plot.data import SWEEP_PANELS

    for ax, column in zip(panels, SWEEP_PANELS):
        label, as_bytes = _SWEEP_LABELS[column]
        values = [v for line in plot.lines for v in line.y[column]]
        size, unit = _unit(max(values, default=0)) if as_bytes else (1, "")
        for line in plot.lines[:12]:
            ax.plot(line.x, [v / size for v in line.y[column]], marker="o", markersize=3, linewidth=1.2,
                    label=_plain(line.label) if line.label else None)
        ax.set_title(label + (f" ({unit})" if unit else ""), fontsize=10)
        ax.set_xticks([x for x, _ in plot.ticks])
        ax.set_xticklabels([_plain(t) for _, t in plot.ticks], rotation=45 if len(plot.ticks) > 8 else 0, fontsize=8)
        ax.set_xlabel(_plain(plot.variable))
        if not as_bytes:
            _count_axis(ax)
        ax.grid(color=_LIGHT, linewidth=0.6)
    if len(plot.lines) > 1:
        extra = f" (first 12 of {len(plot.lines)})" if len(plot.lines) > 12 else ""
        panels[0].legend(fontsize=7, title="lines" + extra, title_fontsize=7)
    _front(fig.add_subplot(grid[:, 2]), plot)
    save(fig, path, plot)


def _front(ax: Any, plot: SweepPlot) -> None:
    a, b = plot.objectives
    pts = plot.front
    ax.scatter([p.x for p in pts], [p.y for p in pts], s=14, color="#999999", label="points")
    best = sorted((p for p in pts if p.optimal), key=lambda p: (p.x, p.y))
    if best:
        ax.plot([p.x for p in best], [p.y for p in best], "-o", color=_PEAK, markersize=5, drawstyle="steps-post",
                label="Pareto front")
    _log_log(ax, [p.x for p in pts], [p.y for p in pts])
    for name, setter in ((a, ax.set_xlabel), (b, ax.set_ylabel)):
        label, _ = _SWEEP_LABELS.get(name.lstrip("-"), (name.lstrip("-"), False))
        setter(f"{label} ({'maximized' if name.startswith('-') else 'minimized'}, log)")
    ax.set_title(f"Pareto front: {a}, {b}", fontsize=10)
    ax.grid(color=_LIGHT, linewidth=0.6)
    ax.legend(fontsize=8, loc="upper left")
    if len(best) <= 20:
        place_labels(ax, [(p.x, p.y, p.label) for p in best], fontsize=7, avoid=[_extent(ax.get_legend())],
                     others=[(p.x, p.y) for p in pts if not p.optimal])


# ---- profile ------------------------------------------------------------------------------------------------------

def roofline(plots: Sequence[Roofline], path: Path) -> None:
    shown = list(plots[:4])
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 7 * len(shown)), squeeze=False)
    for ax, plot in zip(axes[:, 0], shown):
        _roofline(ax, plot)
    save(fig, path, tuple(plots))


def _roofline(ax: Any, plot: Roofline) -> None:
    pts = plot.points
    ridge = plot.peak_flops / plot.bandwidth
    intensities = [p.intensity for p in pts] + [ridge]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(plot.peak_flops, plot.bandwidth * x) for x in xs], color="black", linewidth=1.5)
    ceilings = [ax.text(ridge * 1.15, plot.peak_flops * 1.12, f"compute ceiling {si(round(plot.peak_flops))}FLOP/s",
                        ha="left", va="bottom", fontsize=8),
                ax.text(ridge / 2.5, plot.peak_flops / 5, f"bandwidth {plot.bandwidth / 1e9:.3g} GB/s", ha="left",
                        va="top", fontsize=8)]  # below the slope, which rises to its right
    ax.axvline(ridge, color=_LIGHT, linestyle=":", linewidth=1)
    for p in pts:
        ax.plot([p.intensity, p.intensity], [p.achieved, p.predicted], color="#BBBBBB", linewidth=0.7, zorder=1)
    ax.scatter([p.intensity for p in pts], [p.predicted for p in pts], s=22, facecolor="none", edgecolor=_PEAK,
               label="predicted (the binding roof)", zorder=2)
    ax.scatter([p.intensity for p in pts], [p.achieved for p in pts], s=22, color=_BAR, label="measured", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ys = [p.achieved for p in pts] + [p.predicted for p in pts] + [plot.peak_flops]
    ax.set_ylim(min(ys) / 4, max(ys) * 3)
    ax.set_xlim(lo, hi)
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved, log)")
    ax.set_ylabel("FLOP/s (log)")
    ax.set_title(_plain(plot.title), fontsize=10)
    ax.grid(which="major", color=_LIGHT, linewidth=0.6)
    ax.legend(loc="lower right", fontsize=8, title=f"ceilings: {_short(plot.source, 50)}", title_fontsize=7)
    ax.figure.canvas.draw()
    biggest = sorted(pts, key=lambda p: -p.flops)[:10]
    place_labels(ax, [(p.intensity, p.achieved, _short(p.name, 22)) for p in biggest], fontsize=7,
                 avoid=[_extent(ax.get_legend()), *(_extent(t) for t in ceilings)],
                 others=[(p.intensity, p.predicted) for p in pts] + [(p.intensity, p.achieved) for p in pts])
    if plot.left_out:
        ax.text(0.01, 0.01, f"{plot.left_out} layer{'s' if plot.left_out != 1 else ''} without FLOPs under the "
                "convention (or bytes) not shown", transform=ax.transAxes, fontsize=7, color="grey")
