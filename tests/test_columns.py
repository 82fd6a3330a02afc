"""One record per layer, one column list per output.

Each report row carries its graph op, and its figures are the only per-layer record (the engine keeps no lists
beside the rows, training FLOPs read the rows, the memory models read each op's cost). Every output format of calc
and of compare takes its columns from one list (render/columns.py): a column added there shows everywhere.
"""

from __future__ import annotations

import csv
import io
import json

from conftest import report_of

from archcalc.core.analyze import SUMMED, Row, Totals, analyze
from archcalc.core.kinds import Cost
from archcalc.core.memory import saved_training_bytes
from archcalc.core.spec import load_spec
from archcalc.core.training import training_flops
from archcalc.render import columns
from archcalc.render import report as render

SPEC = """name: small
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1}
  - batchnorm: {}
  - relu: {}
  - sequence:
      - conv: {out: 4, kernel: 1, bias: false}
      - batchnorm: {}
    name: b
"""


def test_every_row_carries_its_op() -> None:
    report = report_of("resnet50")
    # 53 convs (49 + 4 projections) + 53 batch norms + 49 ReLUs + max pool, global average pool, fc + 16 adds;
    # there is no other per-layer list beside the rows: the graph's ops are the rows' ops, in order.
    assert len(report.rows) == len(report.graph.ops) == 53 + 53 + 49 + 3 + 16
    assert [id(r.op) for r in report.rows] == [id(op) for op in report.graph.ops]
    assert all(r.op is not None and (r.name, r.kind) == (r.op.name, r.op.label) for r in report.rows)
    assert all(r.op is None for r in report.outline if not r.leaf)


def test_buffers_live_on_the_row(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(SPEC)), dtype="float16")
    rows = {r.name: r for r in report.rows}
    # BatchNorm2d(4): running mean and var (4 floats each) and num_batches_tracked (one int64).
    assert (rows["bn1"].buffers, rows["bn1"].int_buffers) == (4 + 4 + 1, 1)
    assert (rows["conv1"].buffers, rows["conv1"].int_buffers) == (0, 0)
    assert (report.totals.buffers, report.totals.int_buffers) == (18, 2)
    assert report.totals.buffer_bytes == 16 * 2 + 2 * 8  # float16 statistics, int64 counters
    block = next(r for r in report.outline if r.name == "b")
    assert (block.params, block.buffers, block.int_buffers) == (4 * 4 + 8, 9, 1)  # 1x1 conv, no bias; BN's 2x4


def test_blocks_and_totals_sum_the_rows() -> None:
    report = report_of("resnet50", batch=2)
    for block in (r for r in report.outline if not r.leaf):
        inside = [r for r in report.rows if r.name.startswith(block.name + ".")]
        for field in SUMMED:
            assert getattr(block, field) == sum(getattr(r, field) for r in inside), (block.name, field)
        assert block.int_buffers == sum(1 for r in inside if r.kind == "batchnorm")  # one counter each
    t = report.totals
    assert t.int_buffers == 53  # 53 batch norms in ResNet-50
    for field in SUMMED:
        assert getattr(t, field) == sum(getattr(r, field) for r in report.rows), field


def test_training_flops_read_the_rows_alone() -> None:
    report = report_of("resnet18")
    without_ops = report._replace(graph=report.graph._replace(ops=()))
    assert training_flops(without_ops) == training_flops(report)


def test_saved_bytes_read_each_ops_cost(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(SPEC)))
    graph = report.graph
    assert saved_training_bytes(graph, 4, 1) == report.totals.saved_bytes > 0
    # With no parameters anywhere (as the ops' costs now say), nothing needs a gradient and nothing is kept.
    free = graph._replace(ops=tuple(op._replace(cost=Cost()) for op in graph.ops))
    assert saved_training_bytes(free, 4, 1) == 0


def test_columns_name_real_fields() -> None:
    for cols in (columns.LAYER_COLUMNS, columns.MODEL_COLUMNS):
        keys = [c.key for c in cols]
        assert len(keys) == len(set(keys))
    def has(cls: type, name: str) -> bool:  # a field, or a property computed from the fields (Row.shapes)
        return name in cls._fields or isinstance(getattr(cls, name, None), property)  # type: ignore[attr-defined]

    for c in columns.LAYER_COLUMNS:
        assert callable(c.of) or has(Row, c.of or c.key), c.key
        assert not c.total or has(Totals, c.of or c.key), c.key
    for c in columns.MODEL_COLUMNS:
        assert callable(c.of) or (c.of or c.key) in Totals._fields, c.key
    from archcalc.cli.analytic import SortBy

    assert {s.value for s in SortBy} <= {c.key for c in columns.MODEL_COLUMNS if "table" in c.formats}


def test_a_layer_column_added_to_the_list_shows_in_every_format(monkeypatch) -> None:  # type: ignore
    extra = (columns.Col("trainable_params", "trainable", columns.COUNT, total=True, drop=9),
             columns.Col("depth", "depth", columns.NUMBER, formats=("csv", "json")))
    monkeypatch.setattr(render, "LAYER_COLUMNS", columns.LAYER_COLUMNS + extra)
    report = report_of("lenet5")
    table = render.calc_table(report).lines
    footer = next(line for line in table if line.startswith("│ total"))
    assert "trainable" in table[2] and "depth" not in table[2]
    assert footer.split("│")[-2].strip() == f"{report.totals.trainable_params:,}" == "61,750"
    md = render.calc_md(report).splitlines()
    assert md[2].endswith("| trainable |") and md[-3].endswith(f"| {report.totals.trainable_params:,} |")
    rows = list(csv.reader(io.StringIO(render.calc_csv(report))))
    assert rows[0][-2:] == ["trainable_params", "depth"]
    assert [r[-2:] for r in rows[1:-1]] == [[str(r.trainable_params), str(r.depth)] for r in report.rows]
    layers = json.loads(render.calc_json(report))["layers"]
    assert [(d["trainable_params"], d["depth"]) for d in layers] == [(r.trainable_params, r.depth)
                                                                     for r in report.rows]


def test_a_model_column_added_to_the_list_shows_in_every_format(monkeypatch) -> None:  # type: ignore
    extra = columns.Col("saved_activation_bytes", "training saved", columns.BYTES, "saved_bytes", short="saved",
                        drop=9)
    monkeypatch.setattr(render, "MODEL_COLUMNS", (*columns.MODEL_COLUMNS, extra))
    reports = [report_of("lenet5"), report_of("alexnet")]
    saved = [r.totals.saved_bytes for r in reports]
    assert "training saved" in render.compare_table(reports).lines[2]
    assert render.compare_md(reports).splitlines()[0].endswith("| training saved |")
    rows = list(csv.reader(io.StringIO(render.compare_csv(reports))))
    assert [r[-1] for r in rows] == ["saved_activation_bytes", *map(str, saved)]
    assert [r["totals"]["saved_activation_bytes"] for r in json.loads(render.compare_json(reports))] == saved
    assert sorted(reports, key=render.sort_key("saved_activation_bytes"))[0].totals.saved_bytes == min(saved)
