"""Per-gun values in a pile scenario file: a number, or a short arithmetic expression in
`n` (how many guns the run has) and `gun` (this gun's number, from 1), such as
`"0.2 + 30 * (gun - 1)"` or `"75000 * n"`; and text with `{gun}` / `{n}` fields
(`"LSIMPILE{gun:09d}"`).

Only numbers, the two names, + - * / // % **, parentheses and min / max are allowed: an
expression is checked when the file loads (`check`), so a typo is a FILE:LINE error before
anything runs, and evaluating it never runs anything else.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

NAMES = ("n", "gun")
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max}


class ExprError(ValueError):
    """An expression that is not one of the allowed forms (the message says what)."""


def check(text: str, names: tuple[str, ...] = NAMES) -> None:
    """Raise ExprError unless `text` is an allowed expression in `names`."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ExprError(f"{text!r} is not an expression") from None
    _check(tree.body, names, text)


def _check(node: ast.AST, names: tuple[str, ...], text: str) -> None:
    match node:
        case ast.Constant(value=v) if isinstance(v, int | float) and not isinstance(v, bool):
            return
        case ast.Name(id=name) if name in names:
            return
        case ast.Name(id=name):
            raise ExprError(f"{text!r}: unknown name {name!r} (known: {', '.join(names)})")
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            _check(left, names, text)
            _check(right, names, text)
            return
        case ast.UnaryOp(op=ast.USub() | ast.UAdd(), operand=operand):
            _check(operand, names, text)
            return
        case ast.Call(func=ast.Name(id=f), args=args, keywords=[]) if f in _FUNCTIONS and args:
            for arg in args:
                _check(arg, names, text)
            return
    raise ExprError(f"{text!r}: only numbers, {', '.join(names)}, + - * / // % **, "
                    "parentheses, min and max")


def evaluate(value: float | str, **names: int) -> float:
    """A number as it is; an expression evaluated with `names` (ExprError if it cannot
    be: a division by zero, a result that is not finite)."""
    if not isinstance(value, str):
        return float(value)
    check(value, tuple(names))
    try:
        out = float(_eval(ast.parse(value, mode="eval").body, names))
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        raise ExprError(f"{value!r} with {names}: {exc}") from None
    if not math.isfinite(out):
        raise ExprError(f"{value!r} with {names} is {out}")
    return out


def _eval(node: ast.AST, names: dict[str, int]) -> Any:
    match node:
        case ast.Constant(value=v):
            return v
        case ast.Name(id=name):
            return names[name]
        case ast.BinOp(left=left, op=op, right=right):
            return _BINARY[type(op)](_eval(left, names), _eval(right, names))
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_eval(operand, names)
        case ast.UnaryOp(operand=operand):
            return _eval(operand, names)
        case ast.Call(func=ast.Name(id=f), args=args):
            return _FUNCTIONS[f](*(_eval(a, names) for a in args))
    raise ExprError(f"cannot evaluate {ast.dump(node)}")


def text(template: str, **names: int) -> str:
    """`template` with its {gun} / {n} fields filled (ExprError on any other field)."""
    try:
        return template.format(**names)
    except (KeyError, IndexError, ValueError) as exc:
        raise ExprError(f"{template!r}: {exc!r} (fields: {', '.join(names)})") from None
