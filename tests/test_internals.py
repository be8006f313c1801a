"""Keras Tuner's private internals that the search relies on are still there.

An upgrade of keras-tuner fails here first: re-check each name listed in
`pipeline/search/internals.py` against the new source, then move its
`CHECKED_VERSION`.
"""

import keras_tuner
import pytest

from pipeline import space
from pipeline.search import internals
from pipeline.search.oracles import make_oracle
from pipeline.spec import load as specfile


def test_installed_keras_tuner_is_the_checked_version():
    assert keras_tuner.__version__ == internals.CHECKED_VERSION, (
        f"keras-tuner {keras_tuner.__version__} is installed, but the private names in "
        f"pipeline/search/internals.py were checked against {internals.CHECKED_VERSION}")


def test_every_listed_private_name_exists():
    spec = specfile.load("part1-narrow")
    oracle = make_oracle(spec, space.build(spec))
    assert internals.missing_names(oracle) == []


def test_a_missing_name_is_reported(monkeypatch):
    monkeypatch.delattr(keras_tuner.Oracle, "_duplicate")
    assert "Oracle._duplicate" in internals.missing_names()


def test_oracle_state_helpers_reach_the_real_state():
    spec = specfile.load("part1-narrow")
    oracle = make_oracle(spec, space.build(spec))
    internals.retry_queue(oracle).append("7")
    assert oracle._retry_queue == ["7"]
    internals.set_max_collisions(oracle, 5)
    assert oracle._max_collisions == 5


@pytest.mark.parametrize("values", [[11, 12], ["relu", "tanh"], [True], [0.5, 1.5]])
def test_conditions_go_over_grpc_without_printing_and_unchanged(values, capsys, monkeypatch):
    from keras_tuner.src.engine import conditions

    original = getattr(conditions.Parent.to_proto, "original", conditions.Parent.to_proto)
    monkeypatch.setattr(conditions.Parent, "to_proto", original)
    parent = conditions.Parent("hidden_layers", values)
    keras_tuners = parent.to_proto()  # Keras Tuner's own method prints the first value.
    assert capsys.readouterr().out.strip() == str(values[0])
    internals.quiet_condition_protos()
    assert parent.to_proto() == keras_tuners
    assert capsys.readouterr().out == ""
    assert conditions.Parent.from_proto(parent.to_proto()) == parent
