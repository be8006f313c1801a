"""One progress line per trial: which trial, what it was, how it did, time left."""

from __future__ import annotations

import sys


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Prints a line per finished trial, with an estimate of the time left."""

    def __init__(self, name, max_trials, stream=None):
        self.name = name
        self.max_trials = max_trials
        self.stream = stream or sys.stdout
        self.durations = []

    def say(self, text):
        print(f"[{self.name}] {text}", file=self.stream, flush=True)

    def trial(self, trial_id, config, seconds, metrics=None, failure=None, ended=None):
        """Reports a finished trial; Keras Tuner's trial ids count from 0. `ended`: how
        it ended before its last epoch (pruned, stopped early), if it did."""
        number = int(trial_id) + 1
        self.durations.append(seconds)
        left = max(0, self.max_trials - number)
        eta = sum(self.durations) / len(self.durations) * left
        if failure:
            outcome = f"FAILED ({failure})"
        else:
            outcome = f"val_accuracy {metrics['val_accuracy']:.4f}" + (
                f" ({ended})" if ended else "")
        self.say(f"trial {trial_id} ({number}/{self.max_trials})  {config.describe()}  "
                 f"{config.params.total:,} params  {outcome}  {duration(seconds)}  "
                 f"~{duration(eta)} left")

