"""One progress line per trial, with the time left."""

import io

import pytest

from pipeline.progress import Progress, duration
from pipeline.space import TrialConfig

CONFIG = TrialConfig(units=(62,), activation="sigmoid", learning_rate=0.01, momentum=0.0,
                     batch_size=32, epochs=10)


@pytest.mark.parametrize("seconds, text", [(9.6, "10s"), (61, "1m01s"), (3600, "1h00m"),
                                           (7325, "2h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_trial_line_names_the_trial_its_model_and_the_time_left():
    out = io.StringIO()
    progress = Progress("part1-narrow", 8, stream=out)
    progress.trial("4", CONFIG, 10, {"val_accuracy": 0.91364})
    assert out.getvalue() == (
        "[part1-narrow] trial 4 (5/8)  1x62 sigmoid lr=0.01 m=0 bs=32  49,300 params  "
        "val_accuracy 0.9136  10s  ~30s left\n")


def test_time_left_is_the_mean_trial_time_and_a_failure_says_why():
    out = io.StringIO()
    progress = Progress("s", 4, stream=out)
    progress.trial("0", CONFIG, 10, {"val_accuracy": 0.5})
    progress.trial("1", CONFIG, 30, failure="FailedTrialError: loss became NaN")
    last = out.getvalue().splitlines()[-1]
    assert "FAILED (FailedTrialError: loss became NaN)" in last
    assert last.endswith("~40s left")  # 2 trials left at a mean of 20 s.


def test_a_trial_that_ended_before_its_last_epoch_says_how_and_which_epoch_it_kept():
    out = io.StringIO()
    Progress("s", 2, stream=out).trial("0", CONFIG, 10, {"val_accuracy": 0.9576},
                                       ended="pruned at epoch 4, kept 4")
    assert "val_accuracy 0.9576 (pruned at epoch 4, kept 4)  10s" in out.getvalue()


def test_say_prefixes_the_sweep():
    out = io.StringIO()
    Progress("s/worker0", 1, stream=out).say("hello")
    assert out.getvalue() == "[s/worker0] hello\n"
