"""``code``: complete a Python operator, name or value that the code determines.

Numeric results follow a newline (a REPL transcript) rather than a space, because BPE
vocabularies that split digits would otherwise score a bare space token.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "code"

OPERATORS: dict[str, tuple[str, ...]] = {
    "+": ("add", "plus", "total", "add_numbers", "sum_two"),
    "-": ("subtract", "minus", "difference", "sub"),
    "*": ("multiply", "times", "product", "mul"),
    "/": ("divide", "ratio", "div"),
}
PARAMS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("left", "right"), ("u", "v"),
          ("first", "second"), ("num1", "num2"))
ATTRS = ("name", "age", "color", "size", "price", "title", "email", "count", "score", "owner",
         "width", "height", "speed", "label", "value", "path", "city", "year")
LOOP_VARS = (("item", "items"), ("value", "values"), ("x", "xs"), ("row", "rows"),
             ("word", "words"), ("line", "lines"), ("num", "numbers"), ("user", "users"),
             ("name", "names"), ("point", "points"))
STDLIB = ("os", "sys", "json", "math", "re", "time", "random", "csv")
ALIASES = (("numpy", "np"), ("pandas", "pd"), ("matplotlib.pyplot", "plt"),
           ("tensorflow", "tf"), ("seaborn", "sns"))


def _operator(rng: random.Random) -> tuple[str, str]:
    op = rng.choice(list(OPERATORS))
    a, b = rng.choice(PARAMS)
    return f"def {rng.choice(OPERATORS[op])}({a}, {b}):\n    return {a}", f" {op}"


def _init_attr(rng: random.Random) -> tuple[str, str]:
    attrs = rng.sample(ATTRS, rng.randint(1, 3))
    cls = rng.choice(("Person", "Item", "Car", "Book", "Product", "Task", "Node", "Pet"))
    lines = [f"class {cls}:", f"    def __init__(self, {', '.join(attrs)}):"]
    lines += [f"        self.{a} = {a}" for a in attrs[:-1]]
    lines.append(f"        self.{attrs[-1]} =")
    return "\n".join(lines), f" {attrs[-1]}"


def _loop_var(rng: random.Random) -> tuple[str, str]:
    var, seq = rng.choice(LOOP_VARS)
    head = rng.choice(("", "result = []\n", "total = 0\n", "seen = set()\n", "count = 0\n"))
    body = rng.choice(("print(", "result.append(", "total += len(", "process(", "seen.add(",
                       "print(len("))
    return f"{head}for {var} in {seq}:\n    {body}", var


def _repl_value(rng: random.Random) -> tuple[str, str]:
    xs = [rng.randint(0, 9) for _ in range(rng.randint(2, 6))]
    kind = rng.choice(("len", "max", "min", "sum", "index", "add"))
    if kind == "len":
        expr, value = f"len({xs})", len(xs)
    elif kind == "max":
        expr, value = f"max({xs})", max(xs)
    elif kind == "min":
        expr, value = f"min({xs})", min(xs)
    elif kind == "sum":
        xs = xs[:3]
        expr, value = f"sum({xs})", sum(xs)
    elif kind == "index":
        i = rng.randrange(len(xs))
        expr, value = f"{xs}[{i}]", xs[i]
    else:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        expr, value = f"{a} + {b}", a + b
    return f">>> {expr}\n", str(value)


def _bool_branch(rng: random.Random) -> tuple[str, str]:
    first = rng.choice(("True", "False"))
    other = "False" if first == "True" else "True"
    var = rng.choice(("x", "n", "value", "count", "score", "age"))
    cond = rng.choice((f"{var} > 0", f"{var} == 0", f"{var} < 10", f"{var} % 2 == 0",
                       f"{var} is None", f"{var} >= 18"))
    fn = rng.choice(("check", "is_valid", "test", "ok", "flag"))
    return (f"def {fn}({var}):\n    if {cond}:\n        return {first}\n    else:\n        return",
            f" {other}")


def _import_alias(rng: random.Random) -> tuple[str, str]:
    module, alias = rng.choice(ALIASES)
    lines = [f"import {m}" for m in rng.sample(STDLIB, rng.randint(0, 3))]
    lines.append(f"import {module} as")
    return "\n".join(lines), f" {alias}"


SYNTHETIC = (_operator, _init_attr, _loop_var, _repl_value, _bool_branch, _import_alias)

NATURAL = (
    "Here is a small Python snippet:\n\n{code}",
    "Q: Finish this Python code.\n{code}",
    "User: Can you complete my function?\nAssistant: Of course:\n```python\n{code}",
    "# utils.py -- helper functions written for the homework assignment\n{code}",
    "The following code is from a beginner's tutorial on Python.\n{code}",
    "I am learning to program. This is what I have written so far:\n{code}",
    "Step 3 of the guide: type the code below into your editor.\n{code}",
)


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Bare code prefixes: operators, attributes, loop variables, values, branches, imports."""
    def make(r: random.Random, i: int) -> Example:
        k = i % len(SYNTHETIC)
        prompt, answer = SYNTHETIC[k](r)
        return Example(family=NAME, prompt=prompt, answer=answer,
                       meta={"template": SYNTHETIC[k].__name__.strip("_")})
    return unique_examples(rng, n, make)


def natural(rng: random.Random, n: int) -> list[Example]:
    """The same code tasks introduced by prose, chat turns, comments and fences."""
    def make(r: random.Random, i: int) -> Example:
        t = i % len(NATURAL)
        kind = r.randrange(len(SYNTHETIC))
        code, answer = SYNTHETIC[kind](r)
        return Example(family=NAME, prompt=NATURAL[t].format(code=code), answer=answer,
                       meta={"template": f"nl{t}", "kind": SYNTHETIC[kind].__name__.strip("_")})
    return unique_examples(rng, n, make)


FAMILY = Family(
    name=NAME,
    description="Complete a Python operator, name or value determined by the code.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
