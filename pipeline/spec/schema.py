"""Sweep specs as data: frozen dataclasses, one per section of a spec file.

Everything a search may vary lives under `search_space`; the exercise's rules live
under `constraints`; fixed settings live under `training`; how to search lives
under `tuner`. `specfile` reads and validates the YAML files into these, through
`SpecLoader`: the plain YAML a spec may be written in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import yaml

ALGORITHMS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}
ACTIVATIONS = ("sigmoid", "tanh", "relu", "elu", "selu", "gelu", "softplus", "swish")
SCHEDULES = ("constant", "step", "cosine")  # Learning-rate schedules (`pipeline.schedule`).
PARTS = (1, 2, 3)
# The exercise's sweeps, in the order its questions are asked.
EXERCISE = ("part1-wide", "part1-narrow", "part2-narrow", "part2-medium", "part2-wide",
            "activation", "part3")

# The most a spec (or the command line) may ask for: generous for MNIST networks, and
# bounded: no single number may make setting up a sweep grow without limit.
MAX_HIDDEN_LAYERS = 64  # < 100: a layer's weight seed, trial seed * 100 + layer, is its own.
MAX_UNITS = 8192  # Per hidden layer.
MAX_TRIALS = 100_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_PACK = 256  # Trials trained together; each first builds a model of its own.
# A trial trains under seed * 1000 + trial number (`search.lifecycle.trial_seed`), which
# NumPy needs below 2**32: 4,000,000 * 1000 + 99,999 is, with room to spare.
MAX_SEED = 4_000_000
MAX_SPEC_BYTES = 1024 * 1024  # A spec is a few lines of YAML.


@dataclass(frozen=True)
class Choice:
    """A hyperparameter that takes one of `values` (one value means fixed)."""

    values: tuple

    @property
    def fixed(self):
        return len(self.values) == 1


@dataclass(frozen=True)
class Range:
    """A numeric hyperparameter drawn from [min, max]."""

    min: float
    max: float
    step: float | None = None
    sampling: str = "linear"


@dataclass(frozen=True)
class SearchSpace:
    hidden_layers: Range
    units: Range
    activation: Choice
    shared_units: bool = False
    learning_rate: Choice | Range | None = None
    momentum: Choice | Range | None = None
    batch_size: Choice | None = None
    schedule: Choice | None = None
    warmup_epochs: Choice | None = None
    weight_decay: Choice | Range | None = None
    nesterov: Choice | None = None


@dataclass(frozen=True)
class Constraints:
    min_trainable_params: int = 0
    max_trainable_params: int | None = None
    min_hidden_layers: int = 1
    max_hidden_layers: int | None = None
    min_units: int = 1
    max_units: int | None = None


@dataclass(frozen=True)
class Training:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.01
    momentum: float = 0.0
    validation_split: int = 10_000
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    nesterov: bool = False
    early_stopping: EarlyStopping | None = None
    divergence_guard: DivergenceGuard | None = None


@dataclass(frozen=True)
class EarlyStopping:
    """Stop a trial whose objective has not improved for `patience` epochs; its model
    is then the one of its best epoch."""

    patience: int
    min_delta: float = 0.0


@dataclass(frozen=True)
class DivergenceGuard:
    """End a trial FAILED whose validation accuracy is still below `below` (chance is
    0.1) after `epochs` epochs: it diverged, or sits at chance."""

    epochs: int
    below: float = 0.2


PRUNING_RULES = ("median", "halving")


@dataclass(frozen=True)
class Pruning:
    """Stop a trial at a rung (an epoch in `rungs`) when it is behind the trials that
    reached that epoch: below their median (`median`), or outside the best 1/`eta`
    of them (`halving`); a rung decides once `min_trials` others have reached it."""

    rungs: tuple
    rule: str = "median"
    eta: int = 3
    min_trials: int = 3


@dataclass(frozen=True)
class TunerSettings:
    algorithm: str = "random"
    max_trials: int = 10
    objective: str = "val_accuracy"
    seed: int = 1
    max_consecutive_failed_trials: int = 3
    hyperband_factor: int = 3
    num_initial_points: int | None = None
    pack: int | None = None  # Trials trained together in one step; None: chosen.
    pruning: Pruning | None = None


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    part: int | None
    search_space: SearchSpace
    constraints: Constraints = field(default_factory=Constraints)
    training: Training = field(default_factory=Training)
    tuner: TunerSettings = field(default_factory=TunerSettings)
    path: str | None = field(default=None, compare=False)

    @property
    def direction(self):
        return OBJECTIVES[self.tuner.objective]

    def with_overrides(self, *, max_trials=None, epochs=None, seed=None):
        """Returns a copy with the non-empty overrides applied (0/None: keep)."""
        tuner = self.tuner
        if max_trials:
            tuner = replace(tuner, max_trials=int(max_trials))
        if seed:
            tuner = replace(tuner, seed=int(seed))
        training = replace(self.training, epochs=int(epochs)) if epochs else self.training
        return replace(self, tuner=tuner, training=training)

    def to_dict(self):
        data = asdict(self)
        data.pop("path")
        return data

    def fingerprint(self, *extra):
        """A short hash of everything that decides what a trial computes.

        `max_trials` is left out, so a stopped sweep can be resumed with a larger
        budget; anything else that changes (epochs, seed, space) is a new sweep.
        """
        data = self.to_dict()
        data["tuner"].pop("max_trials")
        data["tuner"].pop("pack")  # Packed trials train as if alone.
        blob = json.dumps([data, *extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# How deep a spec may nest; the shipped ones need 4 (spec > search_space > units > min).
MAX_DEPTH = 10


class SpecLoader(yaml.SafeLoader):
    """Safe YAML without anchors, aliases, duplicate keys or deep nesting.

    A spec is a few lines of plain data. Aliases are refused before anything is
    expanded (a "billion laughs" file stops at its first anchor), and the depth is
    counted before the composer recurses (no `RecursionError` on `[[[[...`).
    """

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _refuse("anchors and aliases (& and *) are not allowed in a spec", event)
        if self.depth >= MAX_DEPTH:
            raise _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) < len(node.value):  # A key given twice: YAML keeps the last.
            seen = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _refuse(f"field {key!r} is given twice", key_node)
                seen.append(key)
        return mapping


def _refuse(problem, at):
    return yaml.constructor.ConstructorError(None, None, problem, at.start_mark)
