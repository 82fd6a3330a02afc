"""Ultralytics model YAML (`yolov8.yaml`, `yolo11.yaml`, ...) to an archcalc spec, without torch or ultralytics.

Ultralytics describes a network as rows `[from, repeats, module, args]` (backbone, then head; `from` is -1 for the
previous row or a row index; a list for Concat and the heads) and a `scales:` table of (depth, width, max_channels)
multiples. Their builder (ultralytics/nn/tasks.py, parse_model) scales a row's output channels to
make_divisible(min(c2, max_channels) * width, 8) = ceil(min(c2, max_channels) * width / 8) * 8 and its repeats to
max(round(n * depth), 1) when n > 1. The spec written here keeps those rules as expressions of the args `depth`,
`width` and `max_channels`, so one spec is every scale (`--set width=0.5`), and one block per Ultralytics module,
named as the module and taking its arguments (Conv, C2f, C3k2, SPPF, ...), with the layer names of their modules
(`cv1`, `m`, `bn`), so a row of the table is `model.N` of Ultralytics' model.

A module the converter does not know is a located error naming the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archcalc.core import yamlsrc
from archcalc.core.errors import Loc, SpecError, did_you_mean
from archcalc.core.yamlsrc import Map, Seq

# One block per Ultralytics module (ultralytics/nn/modules/{conv,block,head}.py), in the order a spec lists them;
# each is emitted only when a row needs it (with the blocks it calls).
BLOCKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Conv": ("""\
  Conv:                              # Conv: conv (no bias, padding k // 2) + BatchNorm + SiLU
    args: {c2: ~, k: 1, s: 1, p: k // 2, g: 1, act: true}
    layers:
      - conv: {out: c2, kernel: k, stride: s, padding: p, groups: g, bias: false, name: conv}
      - batchnorm: {name: bn}
      - silu: {name: act}
        when: act
""", ()),
    "Bottleneck": ("""\
  Bottleneck:                        # Bottleneck: two Convs, plus the input where shortcut and c1 == c2
    args: {c2: ~, shortcut: true, k1: 3, k2: 3, e: 0.5, g: 1, c1: c2}     # c1: the input's channels
    layers:
      - Conv: {c2: floor(c2 * e), k: k1, name: cv1}
      - Conv: {c2: c2, k: k2, g: g, name: cv2}
      - add: [cv2, $input]
        when: shortcut and c1 == c2
""", ("Conv",)),
    "C2f": ("""\
  C2f:                               # C2f: cv1 split in halves, n Bottlenecks on the second, all concatenated
    args: {c2: ~, n: 1, shortcut: false, e: 0.5, c: floor(c2 * e)}
    layers:
      - Conv: {c2: 2 * c, name: cv1}
      - channel_slice: {start: 0, stop: c, name: y0}
      - channel_slice: {start: c, stop: 2 * c, name: y1}
        from: cv1
      - repeat: n
        name: m
        block: {Bottleneck: {c2: c, shortcut: shortcut, e: 1.0}}
      - concat: [y0, y1, m.*]
      - Conv: {c2: c2, name: cv2}
""", ("Conv", "Bottleneck")),
    "C3": ("""\
  C3:                                # C3: n Bottlenecks (1x1, 3x3) on cv1, concatenated with cv2, then cv3
    args: {c2: ~, n: 1, shortcut: true, e: 0.5, k1: 1, c: floor(c2 * e)}
    layers:
      - Conv: {c2: c, name: cv1}
      - repeat: n
        name: m
        block: {Bottleneck: {c2: c, shortcut: shortcut, k1: k1, e: 1.0}}
      - Conv: {c2: c, name: cv2}
        from: $input
      - concat: [m, cv2]
      - Conv: {c2: c2, name: cv3}
""", ("Conv", "Bottleneck")),
    "C3k2": ("""\
  C3k2:                              # C3k2: C2f whose blocks are Bottlenecks, or C3k (a C3 of two 3x3 Bottlenecks)
    args: {c2: ~, n: 1, c3k: false, e: 0.5, shortcut: true, c: floor(c2 * e)}
    layers:
      - Conv: {c2: 2 * c, name: cv1}
      - channel_slice: {start: 0, stop: c, name: y0}
      - channel_slice: {start: c, stop: 2 * c, name: y1}
        from: cv1
      - repeat: n
        name: m
        block:
          cases:
            - C3: {c2: c, n: 2, shortcut: shortcut, k1: 3}    # C3k: two 3x3 Bottlenecks
              when: c3k
            - Bottleneck: {c2: c, shortcut: shortcut}
      - concat: [y0, y1, m.*]
      - Conv: {c2: c2, name: cv2}
""", ("Conv", "Bottleneck", "C3")),
    "SPPF": ("""\
  SPPF:                              # SPPF: cv1 to c1 // 2, three 5x5 max-pools in a row, all concatenated, cv2
    args: {c2: ~, hidden: ~, k: 5, act1: true}
    layers:
      - Conv: {c2: hidden, act: act1, name: cv1}
      - repeat: 3
        name: m
        block: {maxpool: {kernel: k, stride: 1, padding: k // 2}}
      - concat: [cv1, m.*]
      - Conv: {c2: c2, name: cv2}
""", ("Conv",)),
    "PSABlock": ("""\
  PSABlock:                          # PSABlock: x + attention(x), then x + ffn(x) (two 1x1 Convs)
    args: {c: ~, heads: ~}
    layers:
      - psa_attention: {dim: c, num_heads: heads, attn_ratio: 0.5, name: attn}
      - add: [attn, $input]
        name: add_attn
      - Conv: {c2: 2 * c, name: ffn_0}
      - Conv: {c2: c, act: false, name: ffn_1}
      - add: [ffn_1, add_attn]
        name: add_ffn
""", ("Conv",)),
    "C2PSA": ("""\
  C2PSA:                             # C2PSA: cv1 split in halves, n PSABlocks on the second, concatenated, cv2
    args: {c2: ~, n: 1, e: 0.5, c: floor(c2 * e)}
    layers:
      - Conv: {c2: 2 * c, name: cv1}
      - channel_slice: {start: 0, stop: c, name: a}
      - channel_slice: {start: c, stop: 2 * c, name: b}
        from: cv1
      - repeat: n
        name: m
        block: {PSABlock: {c: c, heads: "max(c // 64, 1)"}}
      - concat: [a, m]
      - Conv: {c2: c2, name: cv2}
""", ("Conv", "PSABlock")),
    "DetectLevel": ("""\
  DetectLevel:                       # Detect, Segment or Pose, one level: box branch cv2, class branch cv3, decoded
                                     # (DFL, sigmoid); with extra > 0, cv4 (Segment's mask coefficients, Pose's
                                     # keypoints, undecoded) joins them
    args: {nc: ~, ch: ~, ch0: ~, reg_max: 16, legacy: true, shared: false, extra: 0,
           c2: "max(16, ch0 // 4, reg_max * 4)", c3: "max(ch0, min(nc, 100))", c4: "max(ch0 // 4, extra)"}
                                     # ch: this level's input channels; ch0: the first level's;
                                     # shared: a later level, whose DFL is the first level's
    layers:
      - sequence:
          - Conv: {c2: c2, k: 3}
          - Conv: {c2: c2, k: 3}
          - conv: {out: 4 * reg_max, kernel: 1}
        name: cv2
      - cases:
          - sequence:
              - Conv: {c2: c3, k: 3}
              - Conv: {c2: c3, k: 3}
              - conv: {out: nc, kernel: 1}
            when: legacy
          - sequence:                # YOLO11 and later: a depthwise-separable class branch
              - DWConv: {c2: ch}
              - Conv: {c2: c3}
              - DWConv: {c2: c3}
              - Conv: {c2: c3}
              - conv: {out: nc, kernel: 1}
        name: cv3
        from: $input
      - sequence:
          - Conv: {c2: c4, k: 3}
          - Conv: {c2: c4, k: 3}
          - conv: {out: extra, kernel: 1}
        name: cv4
        from: $input
        when: extra > 0
      - dfl: {reg_max: reg_max, shared: shared, name: dfl}
        from: cv2
        trainable: false             # Ultralytics' DFL weights are fixed (requires_grad False)
      - sigmoid: {name: scores}
        from: cv3
      - cases:
          - concat: [dfl, scores, cv4]
            when: extra > 0
          - concat: [dfl, scores]
        name: out
""", ("Conv", "DWConv")),
    "Proto": ("""\
  Proto:                             # Segment's Proto: Conv 3x3, 2x transposed conv, Conv 3x3, Conv 1x1 to the masks
    args: {c_: ~, c2: 32}
    layers:
      - Conv: {c2: c_, k: 3, name: cv1}
      - conv_transpose: {out: c_, kernel: 2, stride: 2, name: upsample}
      - Conv: {c2: c_, k: 3, name: cv2}
      - Conv: {c2: c2, name: cv3}
""", ("Conv",)),
    "Classify": ("""\
  Classify:                          # Classify: Conv to 1280, global average pool, linear, softmax (eval)
    args: {c2: ~, k: 1, s: 1, c_: 1280}
    layers:
      - Conv: {c2: c_, k: k, s: s, name: conv}
      - global_avgpool: {name: pool}
      - dropout: {p: 0.0, name: drop}
      - linear: {out: c2, name: linear}
      - softmax: {name: softmax}
""", ("Conv",)),
    "DWConv": ("""\
  DWConv:                            # DWConv(c2, c2): a depthwise Conv (groups = gcd(c1, c2) = c2)
    args: {c2: ~, k: 3}
    layers:
      - conv: {out: c2, kernel: k, padding: k // 2, groups: c2, bias: false, name: conv}
      - batchnorm: {name: bn}
      - silu: {name: act}
""", ()),
}

MODULES = ("Conv", "C2f", "C3", "C3k2", "SPPF", "C2PSA", "Bottleneck", "nn.Upsample", "Concat", "Detect", "Segment",
           "Pose", "Classify")
HEADS = ("Detect", "Segment", "Pose")
REPEATED = ("C2f", "C3", "C3k2", "C2PSA")  # parse_model's repeat_modules: n is their argument
REFUSED = {
    "A2C2f": "A2C2f (YOLO12's area attention) is not supported yet: its attention needs the general attention kinds "
             "(archcalc's attention issue)",
}


@dataclass(frozen=True)
class Converted:
    """A converted model: the spec's text, its name, and notes for the user."""

    text: str
    name: str
    warnings: tuple[str, ...] = ()


def scaled(c2: Any) -> str:
    """Ultralytics' output channels of a scaled row: make_divisible(min(c2, max_channels) * width, 8)."""
    return f"ceil(min({c2}, max_channels) * width / 8) * 8"


def repeats(n: int) -> str | int:
    """Ultralytics' depth rule: max(round(n * depth), 1) when n > 1; a row of 1 stays 1."""
    return f"max(round({n} * depth), 1)" if n > 1 else 1


@dataclass
class _Row:
    index: int
    source: tuple[int, ...]
    n: int
    module: str
    args: list[Any]
    loc: Loc
    name: str = ""
    channels: str = ""  # the output channels, an expression of the spec's args


def _value(raw: Any, names: dict[str, Any]) -> Any:
    # Ultralytics reads a string argument as a name it knows (nc) or a Python literal ("nearest", None).
    if isinstance(raw, str) and raw in names:
        return names[raw]
    return raw


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_.]+", value):
        return f'"{value}"'
    return str(value)


def _call(block: str, args: dict[str, Any], name: str) -> str:
    inner = ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in args.items())
    return f"{block}: {{{inner}, name: {name}}}" if inner else f"{block}: {{name: {name}}}"


class _Converter:
    def __init__(self, data: Map, display: str, name: str, scale: str | None,
                 input_shape: tuple[int, ...] | None) -> None:
        self.data, self.display, self.name = data, display, name
        self.input_shape = input_shape
        self.warnings: list[str] = []
        self.used: list[str] = []
        self.scale = scale

    def error(self, loc: Loc, message: str) -> SpecError:
        return SpecError(loc, message)

    def convert(self) -> Converted:
        data = self.data
        for key in ("backbone", "head"):
            if key not in data or not isinstance(data[key], Seq):
                raise self.error(data.loc, f"an Ultralytics model YAML has '{key}': a list of [from, repeats, module, "
                                           "args] rows")
        args = self._args()
        rows = self._rows()
        lines: list[str] = []
        outputs: list[str] = []
        for row in rows:
            lines += self._row(row, rows, outputs)
        return Converted(self._text(args, lines, outputs), self.name, tuple(self.warnings))

    # ---- the spec's args: nc and the scale ---------------------------------------------------------------------
    def _args(self) -> list[str]:
        data = self.data
        nc = data.get("nc", 80)
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise self.error(data.value_loc("nc"), f"nc must be a positive integer, not {nc!r}")
        act = data.get("activation")
        if act is not None and str(act).replace(" ", "") not in ("nn.SiLU()", "torch.nn.SiLU()"):
            raise self.error(data.value_loc("activation"), f"activation {act!r}: only Ultralytics' default SiLU is "
                                                           "supported")
        if data.get("end2end"):
            raise self.error(data.value_loc("end2end"), "end2end (one-to-one) heads are not supported yet")
        self.reg_max = data.get("reg_max", 16)
        if not isinstance(self.reg_max, int) or self.reg_max < 1:
            raise self.error(data.value_loc("reg_max"), f"reg_max must be a positive integer, not {self.reg_max!r}")
        scales = data.get("scales")
        table: list[str] = []
        if scales is not None:
            if not isinstance(scales, Map) or not scales:
                raise self.error(data.value_loc("scales"), "scales must map a scale letter to [depth, width, "
                                                           "max_channels]")
            for key, value in scales.items():
                if (not isinstance(value, Seq) or len(value) != 3
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                    raise self.error(scales.value_loc(key), f"scale '{key}' must be [depth, width, max_channels]")
            scale = self.scale or next(iter(scales))
            if scale not in scales:
                raise SpecError(data.value_loc("scales"), f"--scale {scale}: the model has scales "
                                f"{', '.join(map(str, scales))}" + did_you_mean(scale, map(str, scales)))
            self.scale = scale
            depth, width, max_channels = scales[scale]
            c3k2 = any(isinstance(r, Seq) and len(r) == 4 and r[2] == "C3k2"
                       for part in ("backbone", "head") for r in data[part])
            table = [f"  #   {k}: --set depth={v[0]} --set width={v[1]} --set max_channels={v[2]}"
                     + (f" --set c3k={'true' if k in ('m', 'l', 'x') else 'false'}" if c3k2 else "")
                     + ("  (the default)" if k == scale else "") for k, v in scales.items()]
        else:  # older files (YOLOv3u): one scale, as depth_multiple and width_multiple; no channel cap
            self.scale = None
            depth, width = data.get("depth_multiple", 1.0), data.get("width_multiple", 1.0)
            for key, value in (("depth_multiple", depth), ("width_multiple", width)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise self.error(data.value_loc(key), f"{key} must be a positive number, not {value!r}")
            max_channels = 2**31
        self.nc = nc
        self.kpt_shape = data.get("kpt_shape", [17, 3])
        out = [f"  nc: {nc}", f"  depth: {depth}", f"  width: {width}", f"  max_channels: {max_channels}"]
        if table:
            out = ["  # Ultralytics' scales (scale: depth, width, max_channels multiples):", *table, *out]
        return out

    # ---- rows --------------------------------------------------------------------------------------------------
    def _rows(self) -> list[_Row]:
        rows: list[_Row] = []
        for part in ("backbone", "head"):
            seq = self.data[part]
            for j, raw in enumerate(seq):
                loc = seq.item_loc(j)
                i = len(rows)
                if not isinstance(raw, Seq) or len(raw) != 4:
                    raise self.error(loc, f"row {i}: expected [from, repeats, module, args]")
                f, n, module, args = raw
                sources = f if isinstance(f, Seq) else [f]
                absolute = []
                for s in sources:
                    if (not isinstance(s, int) or isinstance(s, bool) or (i == 0 and s != -1)
                            or (i > 0 and not -i <= s < i)):
                        raise self.error(loc, f"row {i} ({module}): 'from' {f!r} is not an earlier row")
                    absolute.append(s + i if s < 0 else s)
                if i == 0:
                    absolute = [-1]  # the network's input
                if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                    raise self.error(loc, f"row {i} ({module}): repeats must be a positive integer, not {n!r}")
                if not isinstance(module, str):
                    raise self.error(loc, f"row {i}: module must be a name, not {module!r}")
                if not isinstance(args, Seq):
                    raise self.error(loc, f"row {i} ({module}): args must be a list")
                names = {"nc": "nc", "None": None, "kpt_shape": self.data.get("kpt_shape", [17, 3])}
                rows.append(_Row(i, tuple(absolute), n, module, [_value(a, names) for a in args], loc))
        return rows

    def _need(self, block: str) -> None:
        for dep in BLOCKS[block][1]:
            self._need(dep)
        if block not in self.used:
            self.used.append(block)

    def _channels(self, rows: list[_Row], index: int) -> str:
        return "3" if index == -1 else rows[index].channels

    def _arg(self, row: _Row, k: int, default: Any, what: str, check: Callable[[Any], bool]) -> Any:
        value = row.args[k] if k < len(row.args) else default
        if not check(value):
            raise self.error(row.loc, f"row {row.index} ({row.module}): argument {k + 1} ({what}) cannot be "
                                      f"{value!r}")
        return value

    def _row(self, row: _Row, rows: list[_Row], outputs: list[str]) -> list[str]:
        m, i = row.module, row.index
        source = row.source[0]
        src = "" if source in (-1, i - 1) else rows[source].name
        lower = re.sub(r"[^a-z0-9]+", "_", m.lower().removeprefix("nn.")).strip("_")
        row.name = f"{lower}_{i}"
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        is_bool = lambda v: isinstance(v, bool)  # noqa: E731
        is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0  # noqa: E731
        if m in REFUSED:
            raise self.error(row.loc, f"row {i}: {REFUSED[m]}")
        if m not in MODULES:
            raise self.error(row.loc, f"row {i}: Ultralytics module '{m}' is not known to archcalc convert; it "
                                      f"knows {', '.join(MODULES)}" + did_you_mean(m, MODULES))
        if m not in ("Concat", *HEADS) and len(row.source) != 1:
            raise self.error(row.loc, f"row {i} ({m}): 'from' must be one row")
        if m in ("Conv", "C2f", "C3", "C3k2", "SPPF", "C2PSA", "Bottleneck"):
            c2 = self._arg(row, 0, None, "output channels", is_int)
            row.channels = scaled(c2)
        # parse_model: a module that takes no repeats argument is built n times in a row (nn.Sequential); only
        # Conv and Bottleneck rows do that in Ultralytics' files (YOLOv3)
        if m not in ("Conv", "Bottleneck", *REPEATED) and row.n != 1:
            raise self.error(row.loc, f"row {i} ({m}): repeats must be 1 for this module")
        call: dict[str, Any] = {}
        if m == "Conv":
            call = {"c2": row.channels}
            k = self._arg(row, 1, 1, "kernel", is_int)
            s = self._arg(row, 2, 1, "stride", is_int)
            p = self._arg(row, 3, None, "padding", lambda v: v is None or (isinstance(v, int) and v >= 0))
            g = self._arg(row, 4, 1, "groups", is_int)
            self._arg(row, 5, 1, "dilation", lambda v: v == 1)
            self._arg(row, 6, True, "act", lambda v: v is True)
            call.update({k2: v for k2, v, d in (("k", k, 1), ("s", s, 1), ("g", g, 1)) if v != d})
            if p is not None and p != k // 2:
                call["p"] = p
            self._need("Conv")
            text = _call("Conv", call, row.name)
        elif m in ("C2f", "C3k2", "C3"):
            call = {"c2": row.channels}
            if row.n > 1:
                call["n"] = repeats(row.n)
            if m == "C2f":
                shortcut = self._arg(row, 1, False, "shortcut", is_bool)
                self._arg(row, 2, 1, "groups", lambda v: v == 1)
                e = self._arg(row, 3, 0.5, "expansion", is_num)
                if shortcut:
                    call["shortcut"] = True
            elif m == "C3":
                shortcut = self._arg(row, 1, True, "shortcut", is_bool)
                self._arg(row, 2, 1, "groups", lambda v: v == 1)
                e = self._arg(row, 3, 0.5, "expansion", is_num)
                if not shortcut:
                    call["shortcut"] = False
            else:
                c3k = self._arg(row, 1, False, "c3k", is_bool)
                e = self._arg(row, 2, 0.5, "expansion", is_num)
                self._arg(row, 3, False, "attn", lambda v: v is False)
                self._arg(row, 4, 1, "groups", lambda v: v == 1)
                shortcut = self._arg(row, 5, True, "shortcut", is_bool)
                # parse_model: for scales m, l and x every C3k2 uses C3k blocks (args[3] = True)
                call["c3k"] = True if c3k else "c3k"
                if not shortcut:
                    call["shortcut"] = False
                self.c3k_arg = True
            if e != 0.5:
                call["e"] = e
            self._need(m)
            text = _call(m, call, row.name)
        elif m == "SPPF":
            k = self._arg(row, 1, 5, "kernel", is_int)
            npool = self._arg(row, 2, 3, "pooling iterations", lambda v: v == 3)
            shortcut = self._arg(row, 3, False, "shortcut", lambda v: v is False)
            del npool, shortcut
            call = {"c2": row.channels, "hidden": f"({self._channels(rows, source)}) // 2"}
            if k != 5:
                call["k"] = k
            if len(row.args) > 3:  # parse_model: only the rows of 3 arguments or fewer keep cv1's activation
                call["act1"] = False
            self._need("SPPF")
            text = _call("SPPF", call, row.name)
        elif m == "C2PSA":
            e = self._arg(row, 1, 0.5, "expansion", is_num)
            call = {"c2": row.channels}
            if row.n > 1:
                call["n"] = repeats(row.n)
            if e != 0.5:
                call["e"] = e
            self._need("C2PSA")
            text = _call("C2PSA", call, row.name)
        elif m == "Bottleneck":
            shortcut = self._arg(row, 1, True, "shortcut", is_bool)
            self._arg(row, 2, 1, "groups", lambda v: v == 1)
            k = self._arg(row, 3, [3, 3], "kernels", lambda v: isinstance(v, list) and len(v) == 2
                          and all(map(is_int, v)))
            e = self._arg(row, 4, 0.5, "expansion", is_num)
            call = {"c2": row.channels}
            if shortcut:  # Ultralytics adds the input only where c1 == c2: the block compares them
                call["c1"] = self._channels(rows, source)
            else:
                call["shortcut"] = False
            call.update({key: v for key, v, d in (("k1", k[0], 3), ("k2", k[1], 3), ("e", e, 0.5)) if v != d})
            self._need("Bottleneck")
            text = _call("Bottleneck", call, row.name)
        elif m == "nn.Upsample":
            size = self._arg(row, 0, None, "size", lambda v: v is None)
            factor = self._arg(row, 1, None, "scale factor", is_int)
            mode = self._arg(row, 2, "nearest", "mode", lambda v: v == "nearest")
            del size, mode
            row.channels = self._channels(rows, source)
            text = f"upsample: {{scale_factor: {factor}, mode: nearest, name: {row.name}}}"
        elif m == "Concat":
            self._arg(row, 0, 1, "dimension", lambda v: v == 1)
            names = [rows[s].name if s != -1 else "input" for s in row.source]
            row.channels = " + ".join(f"({self._channels(rows, s)})" for s in row.source)
            return [f"  - concat: [{', '.join(names)}]", f"    name: {row.name}"]
        elif m in HEADS:
            self._arg(row, 0, self.nc, "classes", lambda v: v == "nc" or v == self.nc)
            extra: Any = 0
            if m == "Segment":
                extra = self._arg(row, 1, 32, "masks", is_int)
                npr = self._arg(row, 2, 256, "prototypes", is_int)
            elif m == "Pose":
                kpt = self._arg(row, 1, self.kpt_shape, "keypoint shape",
                                lambda v: isinstance(v, Seq | list) and len(v) == 2 and all(map(is_int, v)))
                extra = f"{kpt[0]} * {kpt[1]}"  # kpt_shape: keypoints x (x, y[, visible])
            self._need("DetectLevel")
            out = []
            ch0 = self._channels(rows, row.source[0])
            for level, s in enumerate(row.source):
                name = f"{row.name}_{level}"
                args: dict[str, Any] = {"nc": "nc", "ch": self._channels(rows, s), "ch0": ch0}
                if self.reg_max != 16:
                    args["reg_max"] = self.reg_max
                if not self.legacy(rows):
                    args["legacy"] = False
                if level:
                    args["shared"] = True
                if extra:
                    args["extra"] = extra
                out += [f"  - {_call('DetectLevel', args, name)}", f"    from: {rows[s].name}"]
                outputs.append(name)
            if m == "Segment":  # the mask prototypes, from the first level (npr scaled as a row's channels)
                self._need("Proto")
                out += [f"  - {_call('Proto', {'c_': scaled(npr), 'c2': extra}, f'{row.name}_proto')}",
                        f"    from: {rows[row.source[0]].name}"]
                outputs.append(f"{row.name}_proto")
            return out
        elif m == "Classify":
            self._arg(row, 0, self.nc, "classes", lambda v: v == "nc" or v == self.nc)
            k = self._arg(row, 1, 1, "kernel", is_int)
            s_ = self._arg(row, 2, 1, "stride", is_int)
            self._arg(row, 3, None, "padding", lambda v: v is None)
            self._arg(row, 4, 1, "groups", lambda v: v == 1)
            call = {"c2": "nc", **({"k": k} if k != 1 else {}), **({"s": s_} if s_ != 1 else {})}
            self._need("Classify")
            self.classifier = True
            text = _call("Classify", call, row.name)
        else:
            raise self.error(row.loc, f"row {i}: the {m} head is not supported yet")
        if row.n > 1 and m not in REPEATED:  # n copies in a row, named 0, 1, ... as nn.Sequential's
            call_text = text.replace(f", name: {row.name}}}", "}").replace(f"{{name: {row.name}}}", "{}")
            return ([f"  - repeat: {_yaml_scalar(repeats(row.n))}", f"    name: {row.name}"]
                    + ([f"    from: {src}"] if src else []) + [f"    block: {{{call_text}}}"])
        return [f"  - {text}"] + ([f"    from: {src}"] if src else [])

    def default_input(self) -> tuple[int, ...]:
        # Ultralytics' default image size: 640 for detection, segmentation and pose; 224 for classification
        return (3, 224, 224) if getattr(self, "classifier", False) else (3, 640, 640)

    def legacy(self, rows: list[_Row]) -> bool:
        # parse_model: a C3k2, A2C2f or C2fCIB row anywhere before the head makes the head non-legacy (YOLO11+).
        return not any(r.module in ("C3k2", "A2C2f", "C2fCIB") for r in rows)

    # ---- the text ----------------------------------------------------------------------------------------------
    def _text(self, args: list[str], lines: list[str], outputs: list[str]) -> str:
        blocks = []
        for block in [b for b in BLOCKS if b in self.used]:
            blocks.append(BLOCKS[block][0].rstrip("\n"))
        if getattr(self, "c3k_arg", False):
            big = "true" if self.scale in ("m", "l", "x") else "false"
            args.append(f"  c3k: {big}  # true for scales m, l and x: Ultralytics' parse_model then makes every C3k2 "
                        "use C3k blocks")
        head = [
            f"name: {self.name}",
            f"description: Ultralytics {self.name} (scale {self.scale}), converted from its model YAML"
            if self.scale else f"description: Ultralytics {self.name}, converted from its model YAML",
            f"source: archcalc convert {self.display}",
            f"input: [{', '.join(map(str, self.input_shape or self.default_input()))}]",
            "args:",
            *args,
            "blocks:",
            *blocks,
            "layers:",
            *lines,
        ]
        if len(outputs) > 1:
            head += ["outputs:", *(f"  - {o}" for o in outputs)]
        return "\n".join(head) + "\n"


def convert_text(text: str, display: str, name: str | None = None, scale: str | None = None,
                 input_shape: tuple[int, ...] | None = None) -> Converted:
    """Convert the text of an Ultralytics model YAML; `display` names it in messages (`file:line:col`)."""
    data = yamlsrc.load(text, display)
    if not isinstance(data, Map):
        raise SpecError(Loc(display, 1, 1), "an Ultralytics model YAML is a mapping with backbone: and head:")
    stem = Path(display).stem
    guessed = re.search(r"yolo[v]?\d+([nslmx])(?![a-z])", stem)
    if scale is None and guessed:
        scale = guessed.group(1)  # Ultralytics' guess_model_scale: yolov8s.yaml is scale s of yolov8.yaml
    if name is None:
        name = re.sub(r"(\d+)([nslmx])(?=$|-)", r"\1", stem) if guessed else stem
    return _Converter(data, display, name, scale, input_shape).convert()


def convert_file(path: str | Path, display: str | None = None, name: str | None = None,
                 scale: str | None = None, input_shape: tuple[int, ...] | None = None) -> Converted:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(Loc(str(display or path), 1, 1), f"cannot read {path}: {exc}") from None
    return convert_text(text, display or str(path), name, scale, input_shape)

