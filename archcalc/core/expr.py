"""A small, safe arithmetic evaluator for spec values such as `4 * width` or `(c + 1) // 2`.

Grammar (no Python eval, no attribute access, no calls other than the listed functions):

    cond   := conj ('or' conj)*                     (conditions, for `when:`)
    conj   := neg ('and' neg)*
    neg    := 'not' neg | cmp
    cmp    := expr (('<' | '<=' | '>' | '>=' | '==' | '!=') expr)?
    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/' | '//' | '%') unary)*
    unary  := '-' unary | '+' unary | power
    power  := atom ('**' unary)?
    atom   := INT | FLOAT | NAME | FUNC '(' expr (',' expr)* ')' | '(' expr ')'

Functions: min, max, ceil_div(a, b), round_to(value, multiple) (the `_make_divisible` rule of MobileNet/EfficientNet),
ceil(x), floor(x), round(x) (Python's: halves to even, as torch.round; EfficientNet's depth multiplier, RegNet's
width quantization).
`/` gives an int when the division is exact and a float otherwise.

Hostile input is bounded, never a hang or a traceback: every intermediate value must stay within +-MAX_VALUE (a
power is checked before it is computed, so stacked powers cannot run away), expressions nest at most MAX_NESTING
levels and are at most MAX_LENGTH characters; division by zero, overflow and non-finite floats are ExprErrors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

Number = int | float

# [0-9], not \d: \d also matches other scripts' digits ('٣'), which int() would silently accept.
_TOKEN = re.compile(
    r"\s*(?:([0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)|([0-9]+)|([A-Za-z_][A-Za-z0-9_]*)"
    r"|(//|\*\*|<=|>=|==|!=|[-+*/%(),<>]))"
)

MAX_VALUE = 2**63  # far beyond any layer size, small enough that every operation on it is instant
MAX_NESTING = 64  # parentheses, unary signs and right-nested powers together
MAX_LENGTH = 2000


class ExprError(ValueError):
    pass


def _round_to(value: Number, divisor: Number) -> int:
    # torchvision's _make_divisible: round to the nearest multiple, never below 90% of the value.
    if divisor == 0:
        raise ZeroDivisionError
    new = max(int(divisor), int(value + divisor / 2) // int(divisor) * int(divisor))
    if new < 0.9 * value:
        new += int(divisor)
    return new


def _ceil_div(a: Number, b: Number) -> int:
    if int(b) == 0:
        raise ZeroDivisionError
    return -(-int(a) // int(b))


def _ceil(x: Number) -> int:
    return math.ceil(x)


def _floor(x: Number) -> int:
    return math.floor(x)


def _round(x: Number) -> int:
    return round(x)


FUNCTIONS: dict[str, Callable[..., Number]] = {"min": min, "max": max, "ceil_div": _ceil_div, "round_to": _round_to,
                                               "ceil": _ceil, "floor": _floor, "round": _round}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ExprError(f"unexpected character {text[pos:].lstrip()[:1]!r} in expression '{text}'")
        flt, integer, name, op = match.groups()
        if flt is not None:
            tokens.append(("float", flt))
        elif integer is not None:
            tokens.append(("int", integer))
        elif name is not None:
            tokens.append(("name", name))
        else:
            tokens.append(("op", op))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, names: Mapping[str, object]) -> None:
        self.text = text
        if len(text) > MAX_LENGTH:
            raise ExprError(f"expression of {len(text):,} characters is too long (at most {MAX_LENGTH:,})")
        self.tokens = _tokenize(text)
        self.pos = 0
        self.names = names
        self.nesting = 0

    def nest(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExprError(f"expression nested more than {MAX_NESTING} levels deep in '{_short(self.text)}'")

    def bounded(self, value: Number) -> Number:
        """Every intermediate value is checked: finite, and within +-MAX_VALUE."""
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ExprError(f"'{_short(self.text)}' overflows (a value is not finite)")
        elif not isinstance(value, int):  # e.g. a complex number from (-8) ** 0.5
            raise ExprError(f"'{_short(self.text)}' does not give a real number")
        if abs(value) > MAX_VALUE:
            raise ExprError(f"a value in '{_short(self.text)}' exceeds 2**63; sizes that large are not meaningful")
        return value

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take_op(self, *ops: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in ops:
            self.pos += 1
            return tok[1]
        return None

    def parse(self) -> object:
        if not self.tokens:
            raise ExprError("empty expression")
        value = self.cond()
        if self.pos != len(self.tokens):
            raise ExprError(f"unexpected '{self.tokens[self.pos][1]}' in expression '{self.text}'")
        return value

    def take_word(self, word: str) -> bool:
        tok = self.peek()
        if tok == ("name", word):
            self.pos += 1
            return True
        return False

    def cond(self) -> object:
        value = self.conj()
        while self.take_word("or"):
            rhs = self.conj()
            value = bool(value) or bool(rhs)
        return value

    def conj(self) -> object:
        value = self.neg()
        while self.take_word("and"):
            rhs = self.neg()
            value = bool(value) and bool(rhs)
        return value

    def neg(self) -> object:
        flips = 0
        while self.take_word("not"):  # a loop, not recursion: `not not ... x` cannot exhaust the stack
            flips += 1
        value = self.cmp()
        return value if not flips else bool(value) ^ (flips % 2 == 1)

    def cmp(self) -> object:
        value = self.expr()
        op = self.take_op("<", "<=", ">", ">=", "==", "!=")
        if op is None:
            return value
        rhs = self.expr()
        if op in ("==", "!="):
            return (value == rhs) == (op == "==")
        a, b = _num(value, self.text), _num(rhs, self.text)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def expr(self) -> object:
        value = self.term()
        while op := self.take_op("+", "-"):
            rhs = self.term()
            a, b = _num(value, self.text), _num(rhs, self.text)
            value = self.bounded(a + b if op == "+" else a - b)
        return value

    def term(self) -> object:
        value = self.unary()
        while op := self.take_op("*", "/", "//", "%"):
            a, b = _num(value, self.text), _num(self.unary(), self.text)
            if op == "*":
                value = self.bounded(a * b)
                continue
            if b == 0:
                raise ExprError(f"division by zero in '{_short(self.text)}'")
            try:
                if op == "//":
                    value = a // b
                elif op == "%":
                    value = a % b
                elif isinstance(a, int) and isinstance(b, int) and a % b == 0:
                    value = a // b
                else:
                    value = a / b
            except OverflowError:
                raise ExprError(f"'{_short(self.text)}' overflows") from None
            value = self.bounded(value)
        return value

    def unary(self) -> object:
        self.nest()
        try:
            if self.take_op("-"):
                return -_num(self.unary(), self.text)
            if self.take_op("+"):
                return _num(self.unary(), self.text)
            return self.power()
        finally:
            self.nesting -= 1

    def power(self) -> object:
        base = self.atom()
        if self.take_op("**"):
            exponent = _num(self.unary(), self.text)
            return self.pow(_num(base, self.text), exponent)
        return base

    def pow(self, base: Number, exponent: Number) -> Number:
        # Bound the result before computing it: |base| ** exponent <= MAX_VALUE, or exponent * log2|base| <= 63.
        if base == 0 and exponent < 0:
            raise ExprError(f"division by zero in '{_short(self.text)}' (0 to a negative power)")
        if abs(base) > 1 and exponent > 0 and exponent * math.log2(abs(base)) > 63:
            raise ExprError(f"a value in '{_short(self.text)}' exceeds 2**63; sizes that large are not meaningful")
        try:
            return self.bounded(base**exponent)
        except (OverflowError, ZeroDivisionError):
            raise ExprError(f"'{_short(self.text)}' overflows") from None

    def atom(self) -> object:
        tok = self.peek()
        if tok is None:
            raise ExprError(f"expression '{self.text}' ends too early")
        kind, text = tok
        self.pos += 1
        if kind == "int":
            if len(text) > 19:
                raise ExprError(f"the number {text[:12]}... in '{_short(self.text)}' exceeds 2**63")
            return self.bounded(int(text))
        if kind == "float":
            return self.bounded(float(text))
        if kind == "name":
            if self.take_op("("):
                if text not in FUNCTIONS:
                    raise ExprError(f"unknown function '{text}'; available: {', '.join(sorted(FUNCTIONS))}")
                args = [_num(self.expr(), self.text)]
                while self.take_op(","):
                    args.append(_num(self.expr(), self.text))
                if not self.take_op(")"):
                    raise ExprError(f"missing ')' in '{self.text}'")
                try:
                    return self.bounded(FUNCTIONS[text](*args))
                except TypeError:
                    raise ExprError(f"wrong number of arguments to {text}() in '{self.text}'") from None
                except ZeroDivisionError:
                    raise ExprError(f"division by zero in {text}() in '{_short(self.text)}'") from None
                except (OverflowError, ValueError):
                    raise ExprError(f"{text}() overflows in '{_short(self.text)}'") from None
            if text in ("true", "false"):
                return text == "true"
            if text not in self.names:
                from archcalc.core.errors import name_hint

                hint = name_hint(text, self.names)
                raise ExprError(f"unknown name '{text}' in '{self.text}'{hint}")
            return self.names[text]
        if text == "(":
            value = self.cond()  # nesting is counted in unary(), which every parenthesis passes through
            if not self.take_op(")"):
                raise ExprError(f"missing ')' in '{self.text}'")
            return value
        raise ExprError(f"unexpected '{text}' in expression '{self.text}'")


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: object, text: str) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"'{text}': arithmetic needs numbers, got {value!r}")
    return value


def looks_like_expression(text: str) -> bool:
    """True when a string value should be evaluated (it contains an operator or is a bare name of a variable)."""
    return bool(re.search(r"[-+*/%()<>=!]", text)) or bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text.strip()))


def evaluate(text: str, names: Mapping[str, object]) -> object:
    """Evaluate an expression; a bare name returns the variable's value whatever its type."""
    return _Parser(text, names).parse()
