"""The search space of a spec, its constraints, and parameter counts by arithmetic.

A configuration's trainable parameters are counted from its layer widths alone
(784 inputs, 10 outputs), before any model is built, so that a configuration that
breaks its spec's constraints is never trained. The count equals Keras'
`count_params()` (tests/test_space.py checks this across depths and widths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.data import NUM_CLASSES, NUM_PIXELS
from pipeline.errors import SpecError
from pipeline.spec.schema import Choice, Range, Spec
from pipeline.tracking import names

OPTIMIZER = "SGD"
LOSS = "categorical_crossentropy"
WARMUP_SCHEDULES = ["constant", "cosine"]  # A step schedule starts at its full rate.


@dataclass(frozen=True)
class ParamCount:
    weights: int
    biases: int

    @property
    def total(self):
        return self.weights + self.biases


def count_params(units):
    """Counts the trainable weights and biases of a 784-...-10 dense network.

    Args:
        units: the width of each hidden layer, input side first.

    Returns:
        A `ParamCount`; `total` equals Keras' `model.count_params()`.
    """
    widths = [NUM_PIXELS, *units, NUM_CLASSES]
    weights = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    return ParamCount(weights=weights, biases=sum(widths[1:]))


@dataclass(frozen=True)
class TrialConfig:
    """Everything that decides one trial's model and training run."""

    units: tuple[int, ...]
    activation: str
    learning_rate: float
    momentum: float
    batch_size: int
    epochs: int
    initial_epoch: int = 0
    schedule: str = "constant"  # Of the learning rate: `pipeline.schedule`.
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    nesterov: bool = False
    # The trial's whole budget, which its schedule spans: Hyperband trains a trial in
    # rungs (`epochs` is where this rung stops), each continuing the schedule.
    budget_epochs: int | None = None

    @property
    def schedule_epochs(self):
        """The epochs the learning-rate schedule is defined over."""
        return max(self.budget_epochs or self.epochs, self.epochs)

    @property
    def plain_sgd(self):
        """SGD with a constant rate and momentum alone: what packed training does."""
        return (self.schedule == "constant" and not self.warmup_epochs
                and not self.weight_decay and not self.nesterov)

    @property
    def hidden_layers(self):
        return len(self.units)

    @property
    def params(self):
        return count_params(self.units)

    def describe(self):
        widths = self.units
        shape = (f"{len(widths)}x{widths[0]}" if len(set(widths)) == 1
                 else "-".join(str(u) for u in widths))
        extras = "".join([
            f" {self.schedule}" * (self.schedule != "constant"),
            f" warmup={self.warmup_epochs}" * bool(self.warmup_epochs),
            f" wd={self.weight_decay:g}" * bool(self.weight_decay),
            " nesterov" * self.nesterov])
        return (f"{shape} {self.activation} lr={self.learning_rate:g} "
                f"m={self.momentum:g} bs={self.batch_size}{extras}")


class ConstrainedSpace:
    """A spec's search space, narrowed to what its constraints allow.

    `sample(hp)` declares the space to Keras Tuner (hidden-layer count, one
    conditional `units_i` per possible layer, activation and, where the spec
    searches them, learning rate, momentum and batch size) and turns a trial's
    values into a `TrialConfig`.
    """

    def __init__(self, spec: Spec):
        self.spec = spec
        s, c = spec.search_space, spec.constraints
        self.min_layers = max(s.hidden_layers.min, c.min_hidden_layers)
        self.max_layers = min(s.hidden_layers.max, c.max_hidden_layers or math.inf)
        self.layers_step = s.hidden_layers.step
        self.min_units = _round_up(max(s.units.min, c.min_units), s.units.min, s.units.step)
        self.max_units = min(s.units.max, c.max_units or math.inf)
        self.units_step = s.units.step
        self.shared_units = s.shared_units
        if self.min_units > self.max_units:
            raise SpecError(f"search_space.units: no width in {s.units.min}..{s.units.max} "
                            f"step {s.units.step} meets the constraints")

    # -- Keras Tuner -------------------------------------------------------

    def sample(self, hp):
        """Declares the space on `hp` and returns the configuration it holds."""
        s, training = self.spec.search_space, self.spec.training
        layers = hp.Int("hidden_layers", self.min_layers, self.max_layers, self.layers_step)
        if self.shared_units:
            units = [hp.Int("units", self.min_units, self.max_units, self.units_step)] * layers
        else:
            units = [self._layer_units(hp, i) for i in range(self.max_layers)][:layers]
        values = hp.values
        epochs = values.get("tuner/epochs", training.epochs)
        schedule = _declare(hp, "schedule", s.schedule, training.schedule)
        return TrialConfig(
            units=tuple(units),
            activation=_declare(hp, "activation", s.activation),
            learning_rate=float(_declare(hp, "learning_rate", s.learning_rate,
                                         training.learning_rate)),
            momentum=float(_declare(hp, "momentum", s.momentum, training.momentum)),
            batch_size=int(_declare(hp, "batch_size", s.batch_size, training.batch_size)),
            epochs=int(epochs),
            initial_epoch=int(values.get("tuner/initial_epoch", 0)),
            schedule=schedule,
            warmup_epochs=self._warmup(hp, schedule),
            weight_decay=float(_declare(hp, "weight_decay", s.weight_decay,
                                        training.weight_decay)),
            nesterov=bool(_declare(hp, "nesterov", s.nesterov, training.nesterov)),
            budget_epochs=training.epochs,
        )

    def _warmup(self, hp, schedule):
        """Warm-up epochs: active for the constant and cosine schedules, not for step."""
        s, training = self.spec.search_space, self.spec.training
        if s.warmup_epochs is None:
            return training.warmup_epochs if schedule in WARMUP_SCHEDULES else 0
        if s.schedule is None:  # `specfile` refused warm-up searched for a step schedule.
            return int(_declare(hp, "warmup_epochs", s.warmup_epochs))
        with hp.conditional_scope("schedule", WARMUP_SCHEDULES):
            warmup = _declare(hp, "warmup_epochs", s.warmup_epochs)
        return int(warmup) if schedule in WARMUP_SCHEDULES else 0

    def _layer_units(self, hp, i):
        name = f"units_{i}"
        if i < self.min_layers:  # Every trial has this layer.
            return hp.Int(name, self.min_units, self.max_units, self.units_step)
        depths = list(range(i + 1, self.max_layers + 1))
        with hp.conditional_scope("hidden_layers", depths):
            return hp.Int(name, self.min_units, self.max_units, self.units_step)

    def config(self, values):
        """Returns the `TrialConfig` for a dict of Keras Tuner values."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        self.sample(hp)  # Declare the space, then read the values back.
        hp.values.update(values)
        return self.sample(hp)

    def searched_params(self):
        """The MLflow params of the trials that this space varies, in its order."""
        s = self.spec.search_space
        varied = {
            names.HIDDEN_LAYERS: self.min_layers < self.max_layers,
            names.UNITS: self.min_units < self.max_units,
            names.ACTIVATION: len(s.activation.values) > 1,
            names.LEARNING_RATE: _varies(s.learning_rate),
            names.MOMENTUM: _varies(s.momentum),
            names.BATCH_SIZE: _varies(s.batch_size),
            names.SCHEDULE: _varies(s.schedule),
            names.WARMUP_EPOCHS: _varies(s.warmup_epochs),
            names.WEIGHT_DECAY: _varies(s.weight_decay),
            names.NESTEROV: _varies(s.nesterov),
        }
        return [name for name, varies in varied.items() if varies]

    # -- Constraints -------------------------------------------------------

    def violation(self, config):
        """Returns why `config` breaks the spec's constraints, or None if it is feasible."""
        c = self.spec.constraints
        total = config.params.total
        if total < c.min_trainable_params:
            return f"{total:,} trainable parameters < {c.min_trainable_params:,}"
        if c.max_trainable_params is not None and total > c.max_trainable_params:
            return f"{total:,} trainable parameters > {c.max_trainable_params:,}"
        if not c.min_hidden_layers <= config.hidden_layers <= (c.max_hidden_layers or math.inf):
            return f"{config.hidden_layers} hidden layers outside the constraints"
        if not all(c.min_units <= u <= (c.max_units or math.inf) for u in config.units):
            return f"units {config.units} outside the constraints"
        return None

    def find_feasible(self):
        """Returns some feasible list of widths, or None if none was found.

        For each depth: the narrowest equal widths that reach the minimum parameter
        count, then single-layer steps up from the narrowest network.
        """
        c = self.spec.constraints
        low, high = c.min_trainable_params, c.max_trainable_params or math.inf
        widths = range(self.min_units, int(self.max_units) + 1, self.units_step)
        for layers in range(self.min_layers, int(self.max_layers) + 1, self.layers_step):
            for width in widths:  # Equal widths: the count grows with the width.
                total = count_params([width] * layers).total
                if total >= low:
                    if total <= high:
                        return [width] * layers
                    break
            if self.shared_units:
                continue
            units = [self.min_units] * layers
            while count_params(units).total < low:
                growable = [i for i, u in enumerate(units) if u + self.units_step <= self.max_units]
                if not growable:
                    break
                # Grow the layer whose next step adds the fewest parameters.
                i = min(growable, key=lambda j: count_params(
                    units[:j] + [units[j] + self.units_step] + units[j + 1:]).total)
                units[i] += self.units_step
            if low <= count_params(units).total <= high:
                return units
        return None

    def widest(self):
        """The `TrialConfig` of the space's largest network (default settings)."""
        t = self.spec.training
        return TrialConfig(units=(int(self.max_units),) * int(self.max_layers),
                           activation=self.spec.search_space.activation.values[0],
                           learning_rate=t.learning_rate, momentum=t.momentum,
                           batch_size=t.batch_size, epochs=t.epochs)

    def param_bounds(self):
        """The smallest and largest parameter counts the narrowed space can reach."""
        small = count_params([self.min_units] * self.min_layers).total
        big = count_params([int(self.max_units)] * int(self.max_layers)).total
        c = self.spec.constraints
        return max(small, c.min_trainable_params), min(big, c.max_trainable_params or big)


def build(spec):
    """Returns the `ConstrainedSpace` of `spec`.

    Raises:
        SpecError: if no configuration can meet the spec's constraints.
    """
    space = ConstrainedSpace(spec)
    if space.find_feasible() is None:
        c = spec.constraints
        most = "any" if c.max_trainable_params is None else f"{c.max_trainable_params:,}"
        raise SpecError(
            f"{spec.path or spec.name}: constraints: no configuration in the search space "
            f"has between {c.min_trainable_params:,} and {most} trainable parameters "
            f"with {space.min_layers}..{space.max_layers} hidden layers of "
            f"{space.min_units}..{space.max_units} units")
    return space


def _declare(hp, name, searched, default=None):
    """Declares a searched hyperparameter; an unsearched one keeps `default`."""
    if searched is None:
        return default
    if isinstance(searched, Range):
        return hp.Float(name, searched.min, searched.max, sampling=searched.sampling)
    assert isinstance(searched, Choice)
    if searched.fixed:
        return hp.Fixed(name, searched.values[0])
    return hp.Choice(name, list(searched.values))


def _varies(searched):
    """Whether a spec field is searched over more than one value."""
    if searched is None:
        return False
    return isinstance(searched, Range) or len(searched.values) > 1


def _round_up(value, start, step):
    """The smallest `start + k*step` that is >= value."""
    return start + math.ceil((value - start) / step) * step


def check_reachable(spec):
    """Refuses a `min_trainable_params` above the largest network of the search space.

    Arithmetic, at once: call it before `space.build`, whose search for a feasible
    configuration would find the same only after trying every depth and width.

    Raises:
        SpecError: naming the file, the field and the most it can be.
    """
    s, c = spec.search_space, spec.constraints
    layers = _top(max(s.hidden_layers.min, c.min_hidden_layers),
                  min(s.hidden_layers.max, c.max_hidden_layers or math.inf), s.hidden_layers.step)
    units = _top(s.units.min, min(s.units.max, c.max_units or math.inf), s.units.step)
    largest = count_params([units] * layers).total
    if c.min_trainable_params > largest:
        raise SpecError(f"{spec.path or spec.name}: constraints.min_trainable_params: expected "
                        f"at most {largest:,} (the largest network here: {layers} hidden "
                        f"layers of {units} units), got {c.min_trainable_params:,}")


def _top(start, high, step):
    """The largest of start, start + step, ... that is at most `high` (as Keras Tuner's)."""
    return start + (int(high) - start) // step * step
