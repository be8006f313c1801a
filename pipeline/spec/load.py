"""Spec files: one YAML file per search, read and validated into a `Spec`.

Bad input stops here with one `SpecError` that names the file, the field and what
is allowed. Each field is read by a helper of `specfields`, which raises naming it;
upper bounds (`spec.MAX_*`) keep a spec from asking for more than can be set up.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipeline.errors import SpecError
from pipeline.spec.fields import (
    at_most,
    boolean,
    choices,
    hyper,
    int_choice,
    int_range,
    integer,
    mapping,
    number,
    real,
    string,
)
from pipeline.spec.schema import (
    ACTIVATIONS,
    ALGORITHMS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_HIDDEN_LAYERS,
    MAX_PACK,
    MAX_SEED,
    MAX_SPEC_BYTES,
    MAX_TRIALS,
    MAX_UNITS,
    OBJECTIVES,
    PARTS,
    PRUNING_RULES,
    SCHEDULES,
    Choice,
    Constraints,
    DivergenceGuard,
    EarlyStopping,
    Pruning,
    Range,
    SearchSpace,
    Spec,
    SpecLoader,
    Training,
    TunerSettings,
)

TRAINING_IMAGES = 60_000  # MNIST's; `validation_split` takes the last N of them.
# Where spec names are looked up: the working directory first, then the repo.
SPEC_DIRS = (Path("sweeps"), Path(__file__).resolve().parents[2] / "sweeps")


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
        with path.open("rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"larger than {MAX_SPEC_BYTES:,} bytes; a spec is a few lines "
                            "of YAML")
        text = data.decode("utf-8")
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
    top = mapping(raw, "spec", {"name", "description", "part", "search_space",
                                "constraints", "training", "tuner"}, required=True)
    name = string(top, "name", required=True)
    if name != path.stem:
        raise SpecError(f"name: {name!r} must match the file name {path.stem!r}")
    part = top.get("part")
    if part is not None and (type(part) is not int or part not in PARTS):
        raise SpecError(f"part: {part!r} is not one of 1, 2, 3 or null")
    tuner = _parse_tuner(top.get("tuner"))
    space = _parse_space(top.get("search_space"), tuner.algorithm)
    spec = Spec(name=name, description=string(top, "description", required=True).strip(),
                part=part, search_space=space,
                constraints=_parse_constraints(top.get("constraints")),
                training=_parse_training(top.get("training")), tuner=tuner, path=str(path))
    _check_ranges(spec)
    return spec


def _parse_space(raw, algorithm):
    raw = mapping(raw, "search_space",
                  {"hidden_layers", "units", "shared_units", "activation",
                   "learning_rate", "momentum", "batch_size", "schedule", "warmup_epochs",
                   "weight_decay", "nesterov"}, required=True)
    space = SearchSpace(
        hidden_layers=int_range(raw, "search_space.hidden_layers", "hidden_layers",
                                MAX_HIDDEN_LAYERS),
        units=int_range(raw, "search_space.units", "units", MAX_UNITS),
        shared_units=boolean(raw, "shared_units", "search_space.shared_units", False),
        activation=_activation(raw.get("activation", "sigmoid")),
        learning_rate=hyper(raw, "learning_rate", positive=True),
        momentum=hyper(raw, "momentum", upper=1.0),
        batch_size=int_choice(raw, "batch_size", MAX_BATCH_SIZE, minimum=1),
        schedule=choices(raw, "schedule", SCHEDULES),
        warmup_epochs=int_choice(raw, "warmup_epochs", MAX_EPOCHS),
        weight_decay=hyper(raw, "weight_decay", upper=1.0),
        nesterov=choices(raw, "nesterov", (False, True)),
    )
    if algorithm == "grid":
        for key in ("learning_rate", "momentum", "weight_decay"):
            if isinstance(getattr(space, key), Range):
                raise SpecError(f"search_space.{key}: the grid algorithm needs a list of "
                                "values, not a {min, max} range")
    return space


def _parse_constraints(raw):
    raw = mapping(raw, "constraints",
                  {f.name for f in Constraints.__dataclass_fields__.values()})
    return Constraints(**{
        k: integer(raw, k, f"constraints.{k}", minimum=0, optional=k.startswith("max_"))
        for k in raw})


def _parse_training(raw):
    raw = mapping(raw, "training",
                  {"epochs", "batch_size", "learning_rate", "momentum", "validation_split",
                   "schedule", "warmup_epochs", "weight_decay", "nesterov", "early_stopping",
                   "divergence_guard"})
    schedule = raw.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise SpecError(f"training.schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    return Training(
        epochs=integer(raw, "epochs", "training.epochs", minimum=1, maximum=MAX_EPOCHS,
                       default=10),
        batch_size=integer(raw, "batch_size", "training.batch_size", minimum=1,
                           maximum=MAX_BATCH_SIZE, default=32),
        learning_rate=real(raw, "learning_rate", "training.learning_rate", 0.01,
                           positive=True),
        momentum=real(raw, "momentum", "training.momentum", 0.0, upper=1.0),
        validation_split=_validation_split(raw.get("validation_split", 10_000)),
        schedule=schedule,
        warmup_epochs=integer(raw, "warmup_epochs", "training.warmup_epochs", minimum=0,
                              maximum=MAX_EPOCHS, default=0),
        weight_decay=real(raw, "weight_decay", "training.weight_decay", 0.0, upper=1.0),
        nesterov=boolean(raw, "nesterov", "training.nesterov", False),
        early_stopping=_early_stopping(raw.get("early_stopping")),
        divergence_guard=_divergence_guard(raw.get("divergence_guard")),
    )


def _early_stopping(raw):
    """`training.early_stopping`: {patience[, min_delta]}; absent or null: off."""
    if raw is None:
        return None
    raw = mapping(raw, "training.early_stopping", {"patience", "min_delta"}, required=True)
    return EarlyStopping(
        patience=integer(raw, "patience", "training.early_stopping.patience", minimum=1,
                         maximum=MAX_EPOCHS, default=None),
        min_delta=real(raw, "min_delta", "training.early_stopping.min_delta", 0.0,
                       upper=1.0))


def _divergence_guard(raw):
    """`training.divergence_guard`: {epochs[, below]}; absent or null: off."""
    if raw is None:
        return None
    raw = mapping(raw, "training.divergence_guard", {"epochs", "below"}, required=True)
    return DivergenceGuard(
        epochs=integer(raw, "epochs", "training.divergence_guard.epochs", minimum=1,
                       maximum=MAX_EPOCHS, default=None),
        below=real(raw, "below", "training.divergence_guard.below", 0.2, positive=True,
                   upper=1.0))


def _parse_tuner(raw):
    raw = mapping(raw, "tuner", {f.name for f in TunerSettings.__dataclass_fields__.values()})
    algorithm = raw.get("algorithm", "random")
    if algorithm not in ALGORITHMS:
        raise SpecError(f"tuner.algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    objective = raw.get("objective", "val_accuracy")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise SpecError(f"tuner.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return TunerSettings(
        algorithm=algorithm,
        objective=objective,
        max_trials=integer(raw, "max_trials", "tuner.max_trials", minimum=1,
                           maximum=MAX_TRIALS, default=10),
        seed=integer(raw, "seed", "tuner.seed", minimum=1, maximum=MAX_SEED, default=1),
        max_consecutive_failed_trials=integer(raw, "max_consecutive_failed_trials",
                                              "tuner.max_consecutive_failed_trials",
                                              minimum=1, default=3),
        hyperband_factor=integer(raw, "hyperband_factor", "tuner.hyperband_factor",
                                 minimum=2, default=3),
        num_initial_points=integer(raw, "num_initial_points", "tuner.num_initial_points",
                                   minimum=1, optional=True),
        pack=integer(raw, "pack", "tuner.pack", minimum=1, maximum=MAX_PACK, optional=True),
        pruning=_pruning(raw.get("pruning")),
    )


def _pruning(raw):
    """`tuner.pruning`: {rungs[, rule, eta, min_trials]}; absent or null: off."""
    if raw is None:
        return None
    where = "tuner.pruning"
    raw = mapping(raw, where, {"rungs", "rule", "eta", "min_trials"}, required=True)
    rungs = raw.get("rungs")
    if not isinstance(rungs, list) or not rungs:
        raise SpecError(f"{where}.rungs: expected a list of epochs, e.g. [2, 4, 8]")
    rungs = tuple(number(r, f"{where}.rungs", integer=True) for r in rungs)
    if rungs[0] < 1 or list(rungs) != sorted(set(rungs)):
        raise SpecError(f"{where}.rungs: expected increasing epochs from 1, got {list(rungs)}")
    at_most(rungs[-1], f"{where}.rungs", MAX_EPOCHS)
    rule = raw.get("rule", "median")
    if rule not in PRUNING_RULES:
        raise SpecError(f"{where}.rule: {rule!r} is not one of {', '.join(PRUNING_RULES)}")
    return Pruning(rungs=rungs, rule=rule,
                   eta=integer(raw, "eta", f"{where}.eta", minimum=2, maximum=100, default=3),
                   min_trials=integer(raw, "min_trials", f"{where}.min_trials", minimum=1,
                                      maximum=MAX_TRIALS, default=3))


def _check_ranges(spec):
    """Checks that the search space and the constraints can meet at all."""
    s, c = spec.search_space, spec.constraints
    fewest = max(s.hidden_layers.min, c.min_hidden_layers)
    most = min(s.hidden_layers.max, c.max_hidden_layers or math.inf)
    if fewest > most:
        raise SpecError(
            f"search_space.hidden_layers: {s.hidden_layers.min}..{s.hidden_layers.max} "
            f"never meets constraints {c.min_hidden_layers}..{c.max_hidden_layers}")
    widest = min(s.units.max, c.max_units or math.inf)
    if max(s.units.min, c.min_units) > widest:
        raise SpecError(f"search_space.units: {s.units.min}..{s.units.max} never meets "
                        f"constraints {c.min_units}..{c.max_units}")
    if c.max_trainable_params is not None and c.max_trainable_params < c.min_trainable_params:
        raise SpecError("constraints.max_trainable_params: must be >= min_trainable_params")
    _check_warmup(spec)


def _check_warmup(spec):
    """Warm-up is for the constant and cosine schedules, and ends before training does."""
    s, t = spec.search_space, spec.training
    schedules = s.schedule.values if s.schedule else (t.schedule,)
    warmups = s.warmup_epochs.values if s.warmup_epochs else (t.warmup_epochs,)
    where = "search_space.warmup_epochs" if s.warmup_epochs else "training.warmup_epochs"
    if max(warmups) and set(schedules) == {"step"}:
        raise SpecError(f"{where}: a step schedule starts at its full rate, without "
                        "warm-up; use the constant or cosine schedule")
    if max(warmups) >= t.epochs:
        raise SpecError(f"{where}: expected fewer warm-up epochs than training.epochs "
                        f"({t.epochs}), got {max(warmups)}")


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
    count = number(value, where)
    if isinstance(value, float) and 0 < value < 1:
        count = round(value * TRAINING_IMAGES)  # A fraction: 1e-9 or 0.99999 rounds out.
    if count != int(count) or not 1 <= count < TRAINING_IMAGES:
        raise SpecError(f"{where}: expected an image count in 1..{TRAINING_IMAGES - 1} or a "
                        f"fraction in (0, 1) that leaves both sets an image, got {value!r}")
    return int(count)
