"""The columns of `calc` and `compare`: one list each, read by every output format (table, Markdown, CSV, JSON).

A column names its figure once: its key (JSON and CSV), its header (table and Markdown) and short header (a narrow
terminal), how its values are written (`Form`, one entry per kind of figure), whether the footer shows the report's
total, when it is left out to fit the terminal, and which formats show it. A new per-layer figure is one line in
LAYER_COLUMNS (with its Row field); a new per-model figure one line in MODEL_COLUMNS.
"""

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from archcalc.core.analyze import Report
from archcalc.core.receptive import SeenRF, seen
from archcalc.core.units import axes, dims, fraction, grouped, nbytes, si


def _same(value: Any) -> Any:
    return value


def _x(values: Sequence[object]) -> str:  # CSV writes shapes and receptive fields with an ASCII x
    return "x".join(map(str, values))


class Form(NamedTuple):
    """How one kind of figure is written: in the table, in Markdown, in CSV (csv.writer writes str() of what is
    returned) and in JSON."""

    table: Callable[[Any], str]
    md: Callable[[Any], str]
    csv: Callable[[Any], Any] = _same
    json: Callable[[Any], Any] = _same
    right: bool = True  # right-justified in the table and in Markdown


TEXT = Form(_same, _same, right=False)  # names, kinds, configurations
FLAG = Form(str, str, right=False)
COUNT = Form(grouped, grouped)  # parameters: exact, with thousands separators
OPS = Form(si, grouped)  # MACs and FLOPs: SI prefixes in the table, exact in Markdown
BYTES = Form(nbytes, nbytes)
NUMBER = Form(str, str)  # a small count, as it is
SHAPE = Form(dims, dims, _x, list)
AXES = Form(axes, axes, _x, list)  # one value per spatial axis (the receptive field)
JUMPS = Form(axes, axes, _x, lambda values: [fraction(v) for v in values])  # may hold fractions
NAMES = Form(",".join, ",".join, ",".join, list, right=False)
# Every output of a row: one per line in the table, listed in Markdown and CSV; JSON's "output" is the first (the
# "outputs" mapping names them all).
SHAPES = Form(lambda v: "\n".join(map(dims, v)), lambda v: ", ".join(map(dims, v)), lambda v: " ".join(map(_x, v)),
              lambda v: list(v[0]))
NAMED_SHAPES = Form(str, str, str, lambda v: {name: list(shape) for name, shape in v})

ALL = ("table", "md", "csv", "json")
JSON = ("json",)
KEEP = object()


class Col(NamedTuple):
    key: str  # its name in JSON and CSV (and compare's --sort)
    header: str  # in the table and in Markdown; "{convention}" stands for the FLOPs convention
    form: Form
    of: str | Callable[[Any], Any] = ""  # the Row's (calc) or Totals' (compare) attribute (default: key), or a
    # function of the Row (calc) or the Report (compare)
    short: str = ""  # the header abbreviated, when the terminal is narrow
    drop: int = 0  # 0: always in the table; otherwise left out to fit, highest first
    total: bool = False  # calc: the footer shows the report's total (the Totals attribute of the same name)
    footer: str = ""  # calc: the footer's text otherwise ("total" for the name column)
    wraps: bool = False  # the name column: may wrap onto several lines in the table
    right: bool | None = None  # None: as the form says
    formats: tuple[str, ...] = ALL  # which formats show it
    omit: object = KEEP  # JSON: the key is left out where the value equals this
    when: Callable[[Any], bool] | None = None  # calc: shown only for reports (or training rows) for which this holds

    def getter(self, within: str = "") -> Callable[[Any], Any]:
        """Its value from a Row (calc) or a Report (compare, where an attribute is read `within` "totals.")."""
        return self.of if callable(self.of) else attrgetter(within + (self.of or self.key))

    def title(self, convention: str) -> str:
        return self.header.format(convention=convention)

    @property
    def justify_right(self) -> bool:
        return self.form.right if self.right is None else self.right


LAYER_COLUMNS: tuple[Col, ...] = (
    Col("name", "layer", TEXT, footer="total", wraps=True),
    Col("kind", "kind", TEXT, drop=5),
    Col("leaf", "leaf", FLAG, formats=JSON),
    Col("module", "module", FLAG, formats=JSON),
    Col("input", "input", SHAPE, formats=JSON),
    Col("output", "output", SHAPES, "shapes", total=True, drop=2),  # a collapsed block's several outputs, one a line
    Col("outputs", "outputs", NAMED_SHAPES, formats=JSON, omit=()),
    Col("config", "kernel/stride/pad", TEXT, short="k/s/p", drop=6),
    Col("params", "params", COUNT, total=True),
    Col("trainable_params", "trainable", COUNT, formats=JSON),
    Col("buffers", "buffers", COUNT, formats=JSON),
    Col("macs", "MACs", OPS, total=True),
    Col("flops", "FLOPs ({convention})", OPS, short="FLOPs", drop=1, total=True),
    Col("activation_bytes", "memory", BYTES, short="mem", drop=3, total=True),
    Col("receptive_field", "RF", AXES, "rf", drop=4, total=True),
    Col("jump", "jump", JUMPS, formats=JSON),
    Col("reads", "reads", NAMES, formats=JSON),
    Col("feeds", "feeds", NAMES, drop=7, formats=("table", "json"), omit=(),
        when=lambda report: len(report.outputs) > 1),  # which outputs each layer feeds
    Col("used", "used", FLAG, formats=JSON, omit=True),
)
"""calc: one row per layer (core.analyze.Row), the footer from the report's Totals."""


TRAINING_COLUMNS: tuple[Col, ...] = (
    Col("name", "layer", TEXT, footer="total", wraps=True),
    Col("kind", "kind", TEXT, drop=4),
    Col("output", "output", SHAPES, "shapes", drop=3, formats=("table", "md", "csv")),
    Col("saved_bytes", "saved for backward", BYTES, short="saved", total=True),
    Col("grad_input_flops", "grad input FLOPs ({convention})", OPS, short="dX FLOPs", drop=2, total=True),
    Col("grad_weight_flops", "grad weight FLOPs ({convention})", OPS, short="dW FLOPs", drop=1, total=True),
    Col("training_peak_bytes", "held at the training peak", BYTES, "peak_bytes", short="at peak", total=True,
        when=lambda layers: layers.other_peak is not None),
)
"""calc --columns training: one row per layer (core.training.LayerTraining), the footer from their sums; `when` is
a function of the TrainingLayers. JSON adds the four figures to each layer of the default set."""


def _seen(report: Report) -> SeenRF:
    return seen(report.rows, report.input, report.totals.rf)  # the theoretical RF stays in "receptive_field"


MODEL_COLUMNS: tuple[Col, ...] = (
    Col("name", "name", TEXT, lambda report: report.name, wraps=True, formats=("table", "md", "csv")),
    Col("input", "input", SHAPE, lambda report: report.input, drop=6, right=False, formats=("table", "md", "csv")),
    Col("params", "params", COUNT),
    Col("trainable_params", "trainable", COUNT, formats=JSON),
    Col("buffers", "buffers", COUNT, formats=JSON),
    Col("macs", "MACs", OPS),
    Col("flops", "FLOPs ({convention})", OPS, short="FLOPs", drop=1),
    Col("activation_bytes", "activations", BYTES, short="acts", drop=3),
    Col("param_bytes", "parameter bytes", BYTES, formats=JSON),
    Col("buffer_bytes", "buffer bytes", BYTES, formats=JSON),
    Col("peak_inference_bytes", "inference peak", BYTES, "peak_bytes", short="peak", drop=2),
    Col("saved_activation_bytes", "training saved", BYTES, "saved_bytes", formats=JSON),
    Col("weight_layers", "weight layers", NUMBER, short="wl", drop=5),
    Col("output", "output", SHAPES, lambda report: tuple(s for _, s in report.outputs) or (report.totals.output,),
        drop=7, right=False),
    Col("receptive_field", "RF", AXES, "rf", drop=4),
    Col("jump", "jump", JUMPS, formats=JSON),
    Col("receptive_field_clipped", "RF on this input", AXES, lambda report: _seen(report).clipped,
        formats=JSON),
    Col("receptive_field_global_at", "whole input from", TEXT, lambda report: _seen(report).global_at,
        formats=JSON),
)
"""compare: one row per report (its Totals, unless `of` is a function of the Report); calc's JSON "totals" too."""


def shown(columns: Sequence[Col], fmt: str, report: Any = None) -> list[Col]:
    """The columns a format shows (for calc, of this report)."""
    return [c for c in columns if fmt in c.formats and (c.when is None or report is None or c.when(report))]
