"""How many trials train at once when the user does not say."""

import pytest

from pipeline import space
from pipeline.search.packing import CPU_MAX_PACK, choose_pack
from pipeline.spec import load as specfile


@pytest.mark.parametrize("name, pack", [
    ("part1-wide", 1), ("part1-narrow", 1),  # Part One's epochs are timed alone.
    # Layers of up to CPU_MAX_WIDTH units: as many as the sweep's trials, up to 8.
    ("part2-narrow", 5), ("part2-medium", 5), ("part2-wide", 5), ("activation", 8),
    ("part3", 1),  # Its SGD schedule and early stopping train each trial alone.
])
def test_default_pack_on_one_thread_per_operation(name, pack):
    # What a sweep of one of these specs sets on a 2-core CPU (`device.cpu_threads`).
    spec = specfile.load(name)
    assert choose_pack(spec, space.build(spec), threads=1) == pack


def test_no_pack_when_operations_use_several_threads():
    # As in `exercise` on a CPU, where part1-wide and part3 set every core.
    spec = specfile.load("part2-narrow")
    assert choose_pack(spec, space.build(spec), threads=2) == 1
    assert choose_pack(spec, space.build(spec), requested=5, threads=2) == 5


def test_an_explicit_pack_wins_and_a_large_sweep_is_capped():
    spec = specfile.load("part2-narrow")
    narrowed = space.build(spec)
    assert choose_pack(spec, narrowed, requested=3) == 3
    assert choose_pack(spec.with_overrides(max_trials=40), narrowed, threads=1) == CPU_MAX_PACK


def test_spec_pack_is_read_and_checked(tmp_path):
    from pipeline.errors import SpecError

    path = tmp_path / "packed.yaml"
    body = ("name: packed\ndescription: x\nsearch_space: {hidden_layers: 10, units: 5}\n"
            "tuner: {pack: %s}\n")
    path.write_text(body % 4)
    spec = specfile.load(path)
    assert choose_pack(spec, space.build(spec), threads=2) == 4
    path.write_text(body % 0)
    with pytest.raises(SpecError, match="tuner.pack: must be >= 1, got 0"):
        specfile.load(path)
