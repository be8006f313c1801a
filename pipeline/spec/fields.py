"""One field of a spec, read and checked: mappings, strings, numbers, ranges, choices.

Each reader takes the raw YAML value, returns it in the form `Spec` holds, and
raises one `SpecError` naming the field (`where`) and what is allowed. Upper bounds
(`maximum`, `spec.LIMITS`) keep a spec from asking for a search space, or a
first trial, that would take hours or all the memory to set up.
"""

from __future__ import annotations

import math

from pipeline.errors import SpecError
from pipeline.spec.schema import Choice, Range


def mapping(value, where, allowed, required=False):
    """A mapping with string keys, each one of `allowed`; absent (not required): {}."""
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        got = "nothing" if value is None else type(value).__name__
        raise SpecError(f"{where}: expected a mapping, got {got}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(f"{where}: field names must be strings, got {key!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; allowed: "
                        f"{', '.join(sorted(allowed))}")
    return value


def string(raw, key, required=False):
    value = raw.get(key)
    if value is None and required:
        raise SpecError(f"{key}: required")
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{key}: expected a non-empty string")
    return value


def boolean(raw, key, where, default):
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value


def number(value, where, integer=False):
    """A finite number (an int when `integer`); booleans and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise SpecError(f"{where}: expected {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where}: expected a finite number, got {value}")
    if integer and value != int(value):
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    return int(value) if integer else float(value)


def at_most(value, where, maximum):
    if maximum is not None and value > maximum:
        raise SpecError(f"{where}: expected at most {maximum}, got {value}")
    return value


def integer(raw, key, where, minimum=None, maximum=None, default=None, optional=False):
    value = raw.get(key, default)
    if value is None and optional:
        return None
    value = number(value, where, integer=True)
    if minimum is not None and value < minimum:
        raise SpecError(f"{where}: must be >= {minimum}, got {value}")
    return at_most(value, where, maximum)


def real(raw, key, where, default, positive=False, upper=None):
    value = number(raw.get(key, default), where)
    check_bounds(value, where, positive, upper)
    return value


def check_bounds(value, where, positive=False, upper=None):
    if positive and value <= 0:
        raise SpecError(f"{where}: must be > 0, got {value}")
    if value < 0:
        raise SpecError(f"{where}: must be >= 0, got {value}")
    if upper is not None and value >= upper:
        raise SpecError(f"{where}: must be < {upper}, got {value}")


def int_range(raw, where, key, maximum):
    """A number or {min, max[, step]} of integers in 1..maximum, as a `Range`."""
    if key not in raw:
        raise SpecError(f"{where}: required (a number or {{min, max}})")
    value = raw[key]
    top = where  # A single number is its own max.
    if not isinstance(value, dict):
        n = number(value, where, integer=True)
        value = {"min": n, "max": n}
    else:
        top = f"{where}.max"
    mapping(value, where, {"min", "max", "step"})
    lo = number(value.get("min"), f"{where}.min", integer=True)
    hi = number(value.get("max"), f"{where}.max", integer=True)
    step = number(value.get("step", 1), f"{where}.step", integer=True)
    if lo < 1 or hi < lo or step < 1:
        raise SpecError(f"{where}: need 1 <= min <= max and step >= 1, got {lo}..{hi} "
                        f"step {step}")
    at_most(hi, top, maximum)
    return Range(min=lo, max=hi, step=step)


def hyper(raw, key, positive=False, upper=None):
    """A fixed number, a list of choices, or {min, max, sampling}; absent: None."""
    where = f"search_space.{key}"
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, dict):
        mapping(value, where, {"min", "max", "sampling"})
        lo = number(value.get("min"), f"{where}.min")
        hi = number(value.get("max"), f"{where}.max")
        sampling = value.get("sampling", "linear")
        if sampling not in ("linear", "log"):
            raise SpecError(f"{where}.sampling: {sampling!r} is not one of linear, log")
        for bound in (lo, hi):
            check_bounds(bound, where, positive or sampling == "log", upper)
        if hi <= lo:
            raise SpecError(f"{where}: need min < max, got {lo}..{hi}")
        return Range(min=lo, max=hi, sampling=sampling)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"{where}: expected a number, a list or {{min, max}}")
    values = tuple(number(v, where) for v in values)
    for v in values:
        check_bounds(v, where, positive, upper)
    return Choice(values)


def choices(raw, key, allowed):
    """`search_space.<key>`: one of `allowed` or a list of them; absent: None."""
    where = f"search_space.{key}"
    value = raw.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    shown = ", ".join(str(a).lower() for a in allowed)
    if not values:
        raise SpecError(f"{where}: expected one of {shown} or a list of them")
    for v in values:
        # `True == 1` in Python: compare types too, so 1 is not taken for true.
        if not any(v == a and type(v) is type(a) for a in allowed):
            raise SpecError(f"{where}: {v!r} is not one of {shown}")
    return Choice(tuple(values))


def int_choice(raw, key, maximum, minimum=0):
    """`search_space.<key>`: an integer or a list of them in minimum..maximum; absent:
    None."""
    where = f"search_space.{key}"
    value = raw.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"{where}: expected an integer or a list of integers")
    values = tuple(number(v, where, integer=True) for v in values)
    if any(v < minimum for v in values):
        raise SpecError(f"{where}: must be >= {minimum}, got {list(values)}")
    at_most(max(values), where, maximum)
    return Choice(values)