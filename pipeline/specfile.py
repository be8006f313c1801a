"""Spec files: one YAML file per search, read and validated into a `Spec`.

Bad input stops here with one `SpecError` that names the file, the field and what
is allowed. Each `_read_*` helper reads one field and raises naming it.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipeline.errors import SpecError
from pipeline.spec import (
    ACTIVATIONS,
    ALGORITHMS,
    OBJECTIVES,
    PARTS,
    Choice,
    Constraints,
    Range,
    SearchSpace,
    Spec,
    SpecLoader,
    Training,
    TunerSettings,
)

# Where spec names are looked up: the working directory first, then the repo.
SPEC_DIRS = (Path("sweeps"), Path(__file__).resolve().parents[1] / "sweeps")


def resolve(name_or_path):
    """Finds a spec file by path, or by name in `sweeps/`.

    Raises:
        SpecError: if no such file exists.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise SpecError(f"spec file not found: {path}")
    for directory in SPEC_DIRS:
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(s.stem for s in available()) or "none"
    raise SpecError(f"unknown spec {name_or_path!r}: expected a .yaml path or one of {known}")


def available():
    """Returns the spec files shipped in `sweeps/`, sorted by name."""
    for directory in SPEC_DIRS:
        if directory.is_dir() and any(directory.glob("*.yaml")):
            return sorted(directory.glob("*.yaml"))
    return []


def load(name_or_path):
    """Loads and validates a sweep spec.

    Args:
        name_or_path: a spec name in `sweeps/` (e.g. `part1-wide`) or a YAML path.

    Returns:
        A frozen `Spec`.

    Raises:
        SpecError: naming the file, the field and what is allowed.
    """
    path = resolve(name_or_path)
    try:
        return _parse(_read(path), path)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def _read(path):
    """The YAML document in `path`, as Python data (one line naming the problem)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SpecError(f"cannot be read ({e.strerror or e.__class__.__name__})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte {e.start}); a spec is a YAML text file") from None
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"not valid YAML{where}: {problem}") from None


# ---------------------------------------------------------------------------
# Parsing. Each helper reads one field and raises SpecError naming it.


def _parse(raw, path):
    top = _mapping(raw, "spec", {"name", "description", "part", "search_space",
                                 "constraints", "training", "tuner"}, required=True)
    name = _string(top, "name", required=True)
    if name != path.stem:
        raise SpecError(f"name: {name!r} must match the file name {path.stem!r}")
    part = top.get("part")
    if part is not None and (type(part) is not int or part not in PARTS):
        raise SpecError(f"part: {part!r} is not one of 1, 2, 3 or null")
    tuner = _parse_tuner(top.get("tuner"))
    space = _parse_space(top.get("search_space"), tuner.algorithm)
    spec = Spec(name=name, description=_string(top, "description", required=True).strip(),
                part=part, search_space=space,
                constraints=_parse_constraints(top.get("constraints")),
                training=_parse_training(top.get("training")), tuner=tuner, path=str(path))
    _check_ranges(spec)
    return spec


def _parse_space(raw, algorithm):
    raw = _mapping(raw, "search_space",
                   {"hidden_layers", "units", "shared_units", "activation",
                    "learning_rate", "momentum", "batch_size"}, required=True)
    space = SearchSpace(
        hidden_layers=_int_range(raw, "search_space.hidden_layers", "hidden_layers"),
        units=_int_range(raw, "search_space.units", "units"),
        shared_units=_bool(raw, "shared_units", "search_space.shared_units", False),
        activation=_activation(raw.get("activation", "sigmoid")),
        learning_rate=_hyper(raw, "learning_rate", positive=True),
        momentum=_hyper(raw, "momentum", upper=1.0),
        batch_size=_batch_choice(raw.get("batch_size")),
    )
    if algorithm == "grid":
        for key in ("learning_rate", "momentum"):
            if isinstance(getattr(space, key), Range):
                raise SpecError(f"search_space.{key}: the grid algorithm needs a list of "
                                "values, not a {min, max} range")
    return space


def _parse_constraints(raw):
    raw = _mapping(raw, "constraints",
                   {f.name for f in Constraints.__dataclass_fields__.values()})
    return Constraints(**{
        k: _int(raw, k, f"constraints.{k}", minimum=0, optional=k.startswith("max_"))
        for k in raw})


def _parse_training(raw):
    raw = _mapping(raw, "training",
                   {"epochs", "batch_size", "learning_rate", "momentum", "validation_split"})
    return Training(
        epochs=_int(raw, "epochs", "training.epochs", minimum=1, default=10),
        batch_size=_int(raw, "batch_size", "training.batch_size", minimum=1, default=32),
        learning_rate=_float(raw, "learning_rate", "training.learning_rate", 0.01,
                             positive=True),
        momentum=_float(raw, "momentum", "training.momentum", 0.0, upper=1.0),
        validation_split=_validation_split(raw.get("validation_split", 10_000)),
    )


def _parse_tuner(raw):
    raw = _mapping(raw, "tuner", {f.name for f in TunerSettings.__dataclass_fields__.values()})
    algorithm = raw.get("algorithm", "random")
    if algorithm not in ALGORITHMS:
        raise SpecError(f"tuner.algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    objective = raw.get("objective", "val_accuracy")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise SpecError(f"tuner.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return TunerSettings(
        algorithm=algorithm,
        objective=objective,
        max_trials=_int(raw, "max_trials", "tuner.max_trials", minimum=1, default=10),
        seed=_int(raw, "seed", "tuner.seed", minimum=1, default=1),
        max_consecutive_failed_trials=_int(raw, "max_consecutive_failed_trials",
                                           "tuner.max_consecutive_failed_trials",
                                           minimum=1, default=3),
        hyperband_factor=_int(raw, "hyperband_factor", "tuner.hyperband_factor",
                              minimum=2, default=3),
        num_initial_points=_int(raw, "num_initial_points", "tuner.num_initial_points",
                                minimum=1, optional=True),
        pack=_int(raw, "pack", "tuner.pack", minimum=1, optional=True),
    )


def _check_ranges(spec):
    """Checks that the search space and the constraints can meet at all."""
    s, c = spec.search_space, spec.constraints
    lo = max(s.hidden_layers.min, c.min_hidden_layers)
    hi = min(s.hidden_layers.max, c.max_hidden_layers or math.inf)
    if lo > hi:
        raise SpecError(
            f"search_space.hidden_layers: {s.hidden_layers.min}..{s.hidden_layers.max} "
            f"never meets constraints {c.min_hidden_layers}..{c.max_hidden_layers}")
    lo = max(s.units.min, c.min_units)
    hi = min(s.units.max, c.max_units or math.inf)
    if lo > hi:
        raise SpecError(f"search_space.units: {s.units.min}..{s.units.max} never meets "
                        f"constraints {c.min_units}..{c.max_units}")
    if c.max_trainable_params is not None and c.max_trainable_params < c.min_trainable_params:
        raise SpecError("constraints.max_trainable_params: must be >= min_trainable_params")


def _mapping(value, where, allowed, required=False):
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


def _string(raw, key, required=False):
    value = raw.get(key)
    if value is None and required:
        raise SpecError(f"{key}: required")
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{key}: expected a non-empty string")
    return value


def _bool(raw, key, where, default):
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value


def _number(value, where, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise SpecError(f"{where}: expected {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where}: expected a finite number, got {value}")
    if integer and value != int(value):
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    return int(value) if integer else float(value)


def _int(raw, key, where, minimum=None, default=None, optional=False):
    value = raw.get(key, default)
    if value is None and optional:
        return None
    value = _number(value, where, integer=True)
    if minimum is not None and value < minimum:
        raise SpecError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _float(raw, key, where, default, positive=False, upper=None):
    value = _number(raw.get(key, default), where)
    _check_bounds(value, where, positive, upper)
    return value


def _check_bounds(value, where, positive=False, upper=None):
    if positive and value <= 0:
        raise SpecError(f"{where}: must be > 0, got {value}")
    if value < 0:
        raise SpecError(f"{where}: must be >= 0, got {value}")
    if upper is not None and value >= upper:
        raise SpecError(f"{where}: must be < {upper}, got {value}")


def _int_range(raw, where, key):
    if key not in raw:
        raise SpecError(f"{where}: required (a number or {{min, max}})")
    value = raw[key]
    if not isinstance(value, dict):
        n = _number(value, where, integer=True)
        value = {"min": n, "max": n}
    _mapping(value, where, {"min", "max", "step"})
    lo = _number(value.get("min"), f"{where}.min", integer=True)
    hi = _number(value.get("max"), f"{where}.max", integer=True)
    step = _number(value.get("step", 1), f"{where}.step", integer=True)
    if lo < 1 or hi < lo or step < 1:
        raise SpecError(f"{where}: need 1 <= min <= max and step >= 1, got {lo}..{hi} "
                        f"step {step}")
    return Range(min=lo, max=hi, step=step)


def _hyper(raw, key, positive=False, upper=None):
    """A fixed number, a list of choices, or {min, max, sampling}; absent: None."""
    where = f"search_space.{key}"
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, dict):
        _mapping(value, where, {"min", "max", "sampling"})
        lo = _number(value.get("min"), f"{where}.min")
        hi = _number(value.get("max"), f"{where}.max")
        sampling = value.get("sampling", "linear")
        if sampling not in ("linear", "log"):
            raise SpecError(f"{where}.sampling: {sampling!r} is not one of linear, log")
        for bound in (lo, hi):
            _check_bounds(bound, where, positive or sampling == "log", upper)
        if hi <= lo:
            raise SpecError(f"{where}: need min < max, got {lo}..{hi}")
        return Range(min=lo, max=hi, sampling=sampling)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"{where}: expected a number, a list or {{min, max}}")
    values = tuple(_number(v, where) for v in values)
    for v in values:
        _check_bounds(v, where, positive, upper)
    return Choice(values)


def _batch_choice(value):
    where = "search_space.batch_size"
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"{where}: expected an integer or a list of integers")
    values = tuple(_number(v, where, integer=True) for v in values)
    if any(v < 1 for v in values):
        raise SpecError(f"{where}: batch sizes must be >= 1, got {list(values)}")
    return Choice(values)


def _activation(value):
    where = "search_space.activation"
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"{where}: expected one of {', '.join(ACTIVATIONS)} or a list")
    for v in values:
        if v not in ACTIVATIONS:
            raise SpecError(f"{where}: {v!r} is not one of {', '.join(ACTIVATIONS)}")
    return Choice(tuple(values))


def _validation_split(value):
    """Images held out from the end of the 60,000 (a float in (0, 1): a fraction)."""
    where = "training.validation_split"
    number = _number(value, where)
    if isinstance(value, float) and 0 < value < 1:
        return int(round(value * 60_000))
    if number != int(number) or not 1 <= number < 60_000:
        raise SpecError(f"{where}: expected an image count in 1..59999 or a fraction in "
                        f"(0, 1), got {value!r}")
    return int(number)
