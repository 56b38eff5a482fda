"""Small arithmetic expressions in job files: constraints between parameters and ``<OPT>`` values.

    constraints: ["hidden_dim % attention_heads == 0"]
    lr: "<OPT> * sqrt(batch_size / <OPT:batch_size>) * lr_mult"

``<OPT>`` is the carried-in best value of the key being set, ``<OPT:name>`` that of another key
(seed 002's notation). Python's ``ast`` parses; only numbers, names, arithmetic, comparisons,
``and``/``or``/``not`` and a few math functions evaluate. ``eval`` is not used: a job file may
come from anyone who can submit one.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
            ast.IfExp, ast.Call, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}
FUNCS = {"sqrt": math.sqrt, "log2": math.log2, "log": math.log, "min": min, "max": max, "int": int,
         "round": round, "abs": abs}
_OPT = re.compile(r"<OPT(?::([A-Za-z_][A-Za-z_0-9]*))?>")


class ExprError(ValueError):
    pass


def substitute_opt(text: str, key: str) -> str:
    """``<OPT>`` -> ``__opt__key``; ``<OPT:name>`` -> ``__opt__name`` (names bound by the caller)."""
    return _OPT.sub(lambda m: f"__opt__{m.group(1) or key}", text)


def opt_names(text: str, key: str) -> set[str]:
    return {m.group(1) or key for m in _OPT.finditer(text)}


def is_opt(value: Any) -> bool:
    return isinstance(value, str) and bool(_OPT.search(value))


MAX_EXPONENT = 64  # `x ** 9 ** 8` would keep the search process busy for minutes


def names(expr: str) -> set[str]:
    """The parameter names ``expr`` uses; raises ExprError, at load time, for anything
    :func:`evaluate` would refuse (attribute access, subscripts, lambdas, other calls) and for an
    exponent that is neither a number within +-MAX_EXPONENT nor a parameter name (whose value is
    checked against the same bound when it is evaluated)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ExprError(f"cannot parse expression {expr!r}: {e.msg}") from None
    for n in ast.walk(tree):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow):
            r = n.right.operand if isinstance(n.right, ast.UnaryOp) else n.right
            if not (isinstance(r, ast.Name) or isinstance(r, ast.Constant) and isinstance(r.value, (int, float))
                    and abs(r.value) <= MAX_EXPONENT):
                raise ExprError(f"an exponent must be a parameter or a number within +-{MAX_EXPONENT} in {expr!r}")
        elif not isinstance(n, _ALLOWED) or (isinstance(n, ast.Call) and not (
                isinstance(n.func, ast.Name) and n.func.id in FUNCS and not n.keywords)) or (
                isinstance(n, ast.Constant) and not isinstance(n.value, (int, float, str, bool))):
            raise ExprError(f"not allowed in an expression: {type(n).__name__} in {expr!r} (allowed: numbers, "
                            f"parameter names, arithmetic, comparisons, and/or/not, if-else, {sorted(FUNCS)})")
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in FUNCS}


def evaluate(expr: str, env: dict[str, Any]) -> Any:
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ExprError(f"cannot parse expression {expr!r}: {e.msg}") from None

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str, bool)):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in env:
                raise ExprError(f"unknown name '{n.id}' in {expr!r} (known: {sorted(env)})")
            return env[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _BIN:
            left, right = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and isinstance(right, (int, float)) and isinstance(left, (int, float)) and (
                    abs(right) > MAX_EXPONENT or abs(left) > 1 and right * math.log10(abs(left)) > 400):
                raise ExprError(f"{left!r} ** {right!r} is too large to compute (exponents within +-{MAX_EXPONENT}, "
                                f"results below 1e400) in {expr!r}")
            return _BIN[type(n.op)](left, right)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd, ast.Not)):
            v = ev(n.operand)
            return -v if isinstance(n.op, ast.USub) else (+v if isinstance(n.op, ast.UAdd) else not v)
        if isinstance(n, ast.BoolOp):
            vals = [ev(v) for v in n.values]
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.Compare) and all(type(o) in _CMP for o in n.ops):
            left = ev(n.left)
            for op, right in zip(n.ops, n.comparators):
                r = ev(right)
                if not _CMP[type(op)](left, r):
                    return False
                left = r
            return True
        if isinstance(n, ast.IfExp):
            return ev(n.body) if ev(n.test) else ev(n.orelse)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in FUNCS and not n.keywords:
            return FUNCS[n.func.id](*[ev(a) for a in n.args])
        raise ExprError(f"not allowed in an expression: {ast.dump(n)[:60]} in {expr!r}")

    try:
        return ev(tree)
    except ExprError:
        raise
    except (ArithmeticError, TypeError, ValueError) as e:
        raise ExprError(f"{expr!r}: {e}") from None
