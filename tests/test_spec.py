import numpy as np
import pytest
import yaml

from pipeline import space as space_module
from pipeline.errors import SpecError
from pipeline.search.lifecycle import trial_seed
from pipeline.spec import load as spec_module
from pipeline.spec.schema import MAX_HIDDEN_LAYERS, MAX_SEED, MAX_TRIALS, Choice, Range
from pipeline.training.model import kernel_initializer

SHIPPED = ["part1-wide", "part1-narrow", "part2-narrow", "part2-medium", "part2-wide",
           "part3", "part3-hyperband", "activation"]


def write(tmp_path, body, name="custom"):
    data = {"name": name, "description": "a test spec",
            "search_space": {"hidden_layers": 2, "units": {"min": 4, "max": 8}}}
    for key, value in body.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_spec_loads_within_the_exercise_rules():
    names = [p.stem for p in spec_module.available()]
    assert sorted(names) == sorted(SHIPPED)
    for name in SHIPPED:
        spec = spec_module.load(name)
        assert spec.name == name
        assert spec.training.epochs >= 10
        if name != "activation":
            assert spec.search_space.activation.values == ("sigmoid",)
    assert set(spec_module.load("activation").search_space.activation.values) == {
        "sigmoid", "tanh", "relu"}


def test_shipped_specs_encode_each_part():
    wide, narrow = spec_module.load("part1-wide"), spec_module.load("part1-narrow")
    assert wide.constraints.min_trainable_params == 300_000
    assert narrow.constraints.max_trainable_params == 49_999
    assert (wide.constraints.max_hidden_layers, narrow.constraints.max_hidden_layers) == (1, 1)
    bands = {name: spec_module.load(name).constraints for name in
             ("part2-narrow", "part2-medium", "part2-wide")}
    assert all(c.min_hidden_layers >= 10 for c in bands.values())
    assert (bands["part2-narrow"].min_units, bands["part2-narrow"].max_units) == (1, 9)
    assert (bands["part2-medium"].min_units, bands["part2-medium"].max_units) == (10, 49)
    assert (bands["part2-wide"].min_units, bands["part2-wide"].max_units) == (50, 100)
    part3 = spec_module.load("part3")
    assert part3.constraints.min_hidden_layers >= 3
    t = part3.training  # The test set chooses nothing: 5,000 training images rank trials.
    assert (t.validation_split, t.epochs) == (5000, 25)
    assert part3.tuner.pruning is not None and part3.tuner.pruning.rungs


def test_part3_searches_the_network_and_sgd_not_a_fixed_model():
    space = space_module.build(spec_module.load("part3"))
    assert set(space.searched_params()) >= {
        "hidden_layers", "units", "learning_rate", "momentum", "nesterov", "weight_decay",
        "lr_schedule", "batch_size"}  # As MLflow params.
    # Every trial the oracle can draw keeps Part Three's rules; depth and width span
    # 3-5 layers of 256-768 units, at batch 8 or 16.
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    declared = {p.name: p for p in hp.space}
    layers, units = declared["hidden_layers"], declared["units"]
    assert (layers.min_value, layers.max_value, units.min_value, units.max_value) == (
        3, 5, 256, 768)
    assert {"cosine", "step"} <= set(declared["schedule"].values)
    assert set(declared["batch_size"].values) >= {8, 16}


def test_part3_hyperband_searches_part3s_space_under_its_rules_with_hyperband():
    part3, hyperband = spec_module.load("part3"), spec_module.load("part3-hyperband")
    assert (hyperband.search_space, hyperband.constraints, hyperband.training) == (
        part3.search_space, part3.constraints, part3.training)
    assert (hyperband.tuner.algorithm, hyperband.tuner.pruning) == ("hyperband", None)


def test_value_forms(tmp_path):
    path = write(tmp_path, {"search_space": {
        "hidden_layers": {"min": 1, "max": 3}, "units": {"min": 8, "max": 64, "step": 8},
        "activation": ["sigmoid", "relu"], "learning_rate": {"min": 0.001, "max": 0.1,
                                                             "sampling": "log"},
        "momentum": [0.0, 0.9], "batch_size": 64}})
    spec = spec_module.load(path)
    s = spec.search_space
    assert s.hidden_layers == Range(1, 3, 1)
    assert s.units == Range(8, 64, 8)
    assert s.activation == Choice(("sigmoid", "relu"))
    assert s.learning_rate == Range(0.001, 0.1, sampling="log")
    assert s.momentum == Choice((0.0, 0.9))
    assert s.batch_size == Choice((64,)) and s.batch_size.fixed


@pytest.mark.parametrize("body, message", [
    ({"tuner": {"algorithm": "annealing"}},
     "tuner.algorithm: 'annealing' is not one of random, bayesian, hyperband, grid"),
    ({"tuner": {"objective": "accuracy"}}, "tuner.objective: 'accuracy' is not one of"),
    ({"tuner": {"max_trials": 0}}, "tuner.max_trials: must be >= 1"),
    ({"tuner": {"max_trials": "many"}}, "tuner.max_trials: expected an integer"),
    ({"training": {"epochs": 2.5}}, "training.epochs: expected an integer"),
    ({"training": {"validation_split": 70000}}, "training.validation_split: expected"),
    ({"training": {"momentum": 1.5}}, "training.momentum: must be < 1.0"),
    ({"training": {"optimiser": "adam"}}, "training: unknown field 'optimiser'"),
    ({"search_space": {"hidden_layers": 2, "units": 8, "activation": "softmax"}},
     "search_space.activation: 'softmax' is not one of"),
    ({"search_space": {"units": 8}}, "search_space.hidden_layers: required"),
    ({"search_space": {"hidden_layers": {"min": 3, "max": 1}, "units": 8}},
     "search_space.hidden_layers: need 1 <= min <= max"),
    ({"search_space": {"hidden_layers": 2, "units": 8,
                       "learning_rate": {"min": 0, "max": 1, "sampling": "log"}}},
     "search_space.learning_rate: must be > 0"),
    ({"search_space": {"hidden_layers": 2, "units": 8, "batch_size": [32, 0]}},
     "search_space.batch_size: must be >= 1"),
    ({"constraints": {"min_hidden_layers": 5}},
     "search_space.hidden_layers: 2..2 never meets constraints 5..None"),
    ({"constraints": {"min_trainable_params": 10, "max_trainable_params": 5}},
     "constraints.max_trainable_params: must be >= min_trainable_params"),
    ({"part": 4}, "part: 4 is not one of 1, 2, 3 or null"),
    ({"description": None}, "description: required"),
    ({"search_space": {"hidden_layers": {"min": 10, "max": 10**9}, "units": 8}},
     "search_space.hidden_layers.max: expected at most 64, got 1000000000"),
    ({"search_space": {"hidden_layers": 2, "units": 8193}},
     "search_space.units: expected at most 8192, got 8193"),
    ({"search_space": {"hidden_layers": 2, "units": {"min": 8, "max": 10**6, "step": 8}}},
     "search_space.units.max: expected at most 8192, got 1000000"),
    ({"tuner": {"max_trials": 10**6}}, "tuner.max_trials: expected at most 100000"),
    ({"tuner": {"seed": 4_000_001}}, "tuner.seed: expected at most 4000000, got 4000001"),
    ({"tuner": {"seed": 0}}, "tuner.seed: must be >= 1, got 0"),
    ({"tuner": {"pack": 1000}}, "tuner.pack: expected at most 256, got 1000"),
    ({"training": {"epochs": 10**5}}, "training.epochs: expected at most 10000"),
    ({"training": {"batch_size": 2**17}}, "training.batch_size: expected at most 65536"),
    ({"training": {"validation_split": 0.99999999}}, "training.validation_split: expected"),
    ({"tuner": {"algorithm": "grid"},
      "search_space": {"hidden_layers": 1, "units": 8,
                       "learning_rate": {"min": 0.01, "max": 0.1}}},
     "search_space.learning_rate: the grid algorithm needs a list of values"),
])
def test_bad_spec_names_the_field_and_what_is_allowed(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(SpecError) as error:
        spec_module.load(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_name_must_match_file(tmp_path):
    path = write(tmp_path, {})
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(SpecError, match="name: 'custom' must match the file name 'other'"):
        spec_module.load(tmp_path / "other.yaml")


def test_unknown_spec_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="unknown spec 'part9'.*part1-narrow"):
        spec_module.load("part9")
    with pytest.raises(SpecError, match="spec file not found"):
        spec_module.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        spec_module.load(bad)


def test_overrides_and_fingerprint():
    spec = spec_module.load("part1-narrow")
    bigger = spec.with_overrides(max_trials=40)
    assert bigger.tuner.max_trials == 40 and bigger.training == spec.training
    assert spec.with_overrides(max_trials=0, epochs=0, seed=0) == spec
    # More trials resume the same sweep; anything that changes a trial is a new one.
    assert bigger.fingerprint("data") == spec.fingerprint("data")
    assert spec.with_overrides(epochs=12).fingerprint("data") != spec.fingerprint("data")
    assert spec.with_overrides(seed=5).fingerprint("data") != spec.fingerprint("data")
    assert spec.fingerprint("other data") != spec.fingerprint("data")


def test_min_trainable_params_above_any_network_is_refused_at_once(tmp_path):
    spec = spec_module.load(write(tmp_path, {
        "search_space": {"hidden_layers": {"min": 1, "max": 64, "step": 3},
                         "units": {"min": 1, "max": 8192, "step": 10}},
        "constraints": {"min_trainable_params": 10**15, "max_units": 1000}}))
    with pytest.raises(SpecError, match=r"custom.yaml: constraints.min_trainable_params: "
                       r"expected at most 62,721,391 \(the largest network here: 64 hidden "
                       r"layers of 991 units\), got 1,000,000,000,000,000"):
        space_module.check_reachable(spec)
    space_module.check_reachable(spec_module.load("part1-wide"))  # 300,000 of 814,090.


def test_caps_are_allowed_and_keep_every_trial_seed_valid(tmp_path):
    spec = spec_module.load(write(tmp_path, {
        "search_space": {"hidden_layers": {"min": 1, "max": MAX_HIDDEN_LAYERS},
                         "units": {"min": 1, "max": 8192}, "batch_size": [1, 65536]},
        "training": {"epochs": 10_000, "batch_size": 65_536, "validation_split": 0.5},
        "tuner": {"max_trials": MAX_TRIALS, "seed": MAX_SEED, "pack": 256}}))
    assert spec.training.validation_split == 30_000
    # Keras Tuner numbers trials 0..max_trials - 1; NumPy takes seeds below 2**32.
    last = trial_seed(spec.tuner.seed, f"{MAX_TRIALS - 1:06d}")
    assert last == 4_000_099_999 < 2**32
    np.random.seed(last)
    # Each layer's weight seed is its own, across the trials of a sweep too.
    seeds = {kernel_initializer(trial_seed(MAX_SEED, t), layer).seed
             for t in range(3) for layer in range(MAX_HIDDEN_LAYERS + 1)}
    assert len(seeds) == 3 * (MAX_HIDDEN_LAYERS + 1)
