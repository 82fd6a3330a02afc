"""`when:` conditions and tensor references (issue 32): `and`, `or`, `not` work as docs/spec.md says; a value that is
no condition (null, a list, a word) and a tensor name with a line break are refused with a located message, never
silently taken. Expected rows are written out by hand from the spec text."""

from __future__ import annotations

import re

import pytest

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec

BLOCK = """\
name: w
input: [3, 8, 8]
blocks:
  b:
    args: {se: 0, dw: 0}
    layers:
      - conv: {out: 4, kernel: 1}
      - relu:
        when: se and dw
      - sigmoid:
        when: se or dw
      - tanh:
        when: not se
layers:
  - b: {se: SE, dw: DW}
"""


@pytest.mark.parametrize(("se", "dw", "kinds"), [
    (0, 0, ["conv", "tanh"]),
    (1, 0, ["conv", "sigmoid"]),
    (0, 1, ["conv", "sigmoid", "tanh"]),
    (1, 1, ["conv", "relu", "sigmoid"]),
])
def test_when_takes_and_or_not(write_spec, se: int, dw: int, kinds: list[str]) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(BLOCK.replace("SE", str(se)).replace("DW", str(dw)))
    assert [r.kind for r in analyze(load_spec(path)).rows] == kinds


def test_when_with_parentheses_and_comparisons(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = BLOCK.replace("se and dw", "not (se > 0 and dw == 0)").replace("se or dw", "se >= 1 or not dw")
    rows = analyze(load_spec(write_spec(text.replace("SE", "1").replace("DW", "0")))).rows
    # not (True and True) is false: no relu; 1 >= 1 or ... is true: sigmoid; not se is false: no tanh
    assert [r.kind for r in rows] == ["conv", "sigmoid"]


def _located_error(path, line: int, col: int, pattern: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError) as info:
        analyze(load_spec(path))
    assert str(info.value).startswith(f"{path}:{line}:{col}: "), str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)


HEAD = "name: w\ninput: [3, 8, 8]\nargs: {mode: same}\nlayers:\n  - conv: {out: 4, kernel: 1, name: c1}\n"


@pytest.mark.parametrize(("value", "shown"), [
    ("[1]", "a list"), ("null", r"null \(an empty value\)"), ("", r"null \(an empty value\)"),
    ('""', "an empty string"), ("{a: 1}", "a mapping"), ("mode", "'mode' gives 'same'"), (".nan", "nan"),
])
def test_when_that_is_no_condition_is_refused_where_it_stands(write_spec, value: str, shown: str) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(HEAD + f"  - relu:\n    when: {value}\n")
    _located_error(path, 7, 11 if value else 10, rf"'when' takes a condition .*; {shown},? .*not a condition")


def test_when_with_an_unknown_name_says_which(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(HEAD + "  - relu:\n    when: se and dw\n")
    _located_error(path, 7, 11, r"unknown name 'se'")


@pytest.mark.parametrize("text", [
    '  - relu:\n    from: "c1\\n"\n',
    '  - relu:\n    from: " c1"\n',
    '  - add: ["c1\\n", c1]\n',
    '  - upsample: {size_of: "c1\\n"}\n',
    '  - relu:\n    from: "c1 c1"\n',
])
def test_a_tensor_name_with_a_line_break_or_space_is_refused(write_spec, text: str) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(HEAD + text)
    with pytest.raises(SpecError) as info:
        analyze(load_spec(path))
    message = str(info.value)
    assert re.match(re.escape(str(path)) + r":[67]:\d+: ", message), message
    assert "is not a tensor name" in message, message


def test_an_output_or_a_name_with_a_line_break_is_refused(write_spec) -> None:  # type: ignore[no-untyped-def]
    _located_error(write_spec(HEAD + 'outputs: ["c1\\n"]\n'), 6, 11, "is not a tensor name")
    _located_error(write_spec(HEAD + '  - relu: {name: "r\\n"}\n'), 6, 18, "must be letters, digits")


def test_valid_references_still_resolve(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = HEAD + "  - relu:\n    from: c1\n  - add: [c1, relu1]\n  - sequence: [relu]\n    name: s\n" \
                  "  - mul: [s.relu1, relu1]\n    name: m\n  - concat: [$input, m]\n" \
                  "  - conv: {out: 3, kernel: 1}\n    from: concat1\noutputs: [conv1, add1]\n"
    rows = analyze(load_spec(write_spec(text))).rows
    assert [(r.name, r.output[0]) for r in rows] == [("c1", 4), ("relu1", 4), ("add1", 4), ("s.relu1", 4), ("m", 4),
                                                     ("concat1", 7), ("conv1", 3)]


def test_args_named_by_a_yaml_boolean_are_refused_not_a_traceback(write_spec) -> None:  # type: ignore[no-untyped-def]
    # YAML reads `on:` as true; an unknown name then used to crash did_you_mean (a bool among the names).
    path = write_spec("name: w\ninput: [3, 8, 8]\nargs: {on: 1}\nlayers:\n  - conv: {out: x, kernel: 1}\n")
    _located_error(path, 3, 8, "argument name True must be a word.*quote it")


@pytest.mark.parametrize(("item", "pattern"), [
    ("{nosuch: null, when: 0}", "unknown layer kind or block 'nosuch'"),
    ("{conv: {bogus: 1}, when: 0}", "conv: unknown argument 'bogus'"),
    ("{conv: {out: 4, kernel: 1}, when: 0, extra: 1}", "unexpected key 'extra'"),
    ("{relu: null, sigmoid: null, when: 0}", "one layer per list entry"),
    ("{repeat: 2, when: 0}", "repeat needs 'block'"),
    ("{add: [a], when: 0}", "add needs a list of at least two"),
    ("{relu: null, when: 0, from: 'a b'}", "is not a tensor name"),
    ("{when: 0}", "needs a layer, block, composite or merge"),
])
def test_an_item_switched_off_is_still_checked_for_its_form(write_spec, item: str, pattern: str) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(HEAD + f"  - {item}\n")
    with pytest.raises(SpecError, match=pattern) as info:
        analyze(load_spec(path))
    assert str(info.value).startswith(f"{path}:6:"), str(info.value)
