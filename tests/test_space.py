import keras_tuner
import pytest

from pipeline import space as space_module
from pipeline.errors import SpecError
from pipeline.space import TrialConfig, count_params
from pipeline.spec import load as spec_module
from pipeline.tracking.trial_run import trial_params
from pipeline.training.model import build_model


def config(units, **kwargs):
    settings = dict(activation="sigmoid", learning_rate=0.01, momentum=0.0,
                    batch_size=32, epochs=10)
    settings.update(kwargs)
    return TrialConfig(units=tuple(units), **settings)


@pytest.mark.parametrize("units", [
    [1], [25], [62], [63], [378], [1024],
    [9] * 10, [10, 49, 13, 27, 10, 11, 12, 48, 30, 20], [100] * 12,
    [512, 512, 512], [7, 300, 2, 64],
])
def test_arithmetic_equals_keras_count_params(units):
    model = build_model(config(units))
    count = count_params(units)
    assert count.total == model.count_params()
    kernels = sum(int(layer.kernel.numpy().size) for layer in model.layers)
    biases = sum(int(layer.bias.numpy().size) for layer in model.layers)
    assert (count.weights, count.biases) == (kernels, biases)


def test_exercise_boundaries():
    assert count_params([378]).total == 300_520  # smallest Part One wide model
    assert count_params([377]).total < 300_000
    assert count_params([62]).total == 49_300  # widest Part One narrow model
    assert count_params([63]).total >= 50_000


def test_mlflow_params_hold_only_active_hyperparameters():
    params = trial_params(config([30, 20, 10], learning_rate=0.1, momentum=0.9))
    assert params == {"hidden_layers": 3, "units": "30,20,10", "activation": "sigmoid",
                      "optimizer": "SGD", "learning_rate": 0.1, "momentum": 0.9,
                      "batch_size": 32, "epochs": 10, "loss_function": "categorical_crossentropy"}


def test_values_to_config_drop_inactive_layers():
    space = space_module.build(spec_module.load("part2-narrow"))
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    names = {p.name for p in hp.space}
    assert {"hidden_layers", "units_0", "units_11"} <= names
    # A deeper earlier sample leaves units_10/units_11 values; a 10-layer trial ignores them.
    values = {"hidden_layers": 10, **{f"units_{i}": i % 9 + 1 for i in range(12)}}
    cfg = space.config(values)
    assert cfg.units == tuple(i % 9 + 1 for i in range(10))
    assert trial_params(cfg)["units"].count(",") == 9


def test_violation_and_feasible_search():
    space = space_module.build(spec_module.load("part1-wide"))
    assert space.violation(config([377])) == "299,725 trainable parameters < 300,000"
    assert space.violation(config([378])) is None
    assert count_params(space.find_feasible()).total >= 300_000
    narrow = space_module.build(spec_module.load("part1-narrow"))
    assert "> 49,999" in narrow.violation(config([64]))


def test_infeasible_constraints_are_rejected_at_load(tmp_path):
    path = tmp_path / "impossible.yaml"
    path.write_text(
        "name: impossible\ndescription: too big for its widths\n"
        "search_space: {hidden_layers: {min: 1, max: 2}, units: {min: 1, max: 50}}\n"
        "constraints: {min_trainable_params: 300000}\n")
    spec = spec_module.load(path)
    with pytest.raises(SpecError, match="no configuration in the search space has between "
                                        "300,000 and any trainable parameters"):
        space_module.build(spec)


def test_narrow_window_found_by_single_layer_steps(tmp_path):
    # Equal widths give 8,180 (10) or 9,019 (11) params: only unequal ones fit.
    path = tmp_path / "window.yaml"
    path.write_text(
        "name: window\ndescription: a narrow window\n"
        "search_space: {hidden_layers: 3, units: {min: 10, max: 30}}\n"
        "constraints: {min_trainable_params: 8900, max_trainable_params: 8950}\n")
    units = space_module.build(spec_module.load(path)).find_feasible()
    assert 8900 <= count_params(units).total <= 8950
