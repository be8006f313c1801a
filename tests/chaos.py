"""Chaos for the chief/worker mode: one sweep, a chief and two workers, seeded faults.

`run_chaos` runs one small sweep with a chief, a plain worker (`w1`, `--pack 1`) and
a packed worker (`wp`, `--pack 2`), each its own `SweepProcess` started with one
command that never changes, against the tracking server MLflow points at (the tests'
`tracking_server`, or `bench/soak.py`'s own). While the sweep runs it injects a
schedule of faults (`schedule`: seeded with `random.Random(seed)`, the same for the
same seed and count): SIGKILL or SIGTERM to a process group (the chief, a worker, or
the chief and the packed worker together, as a lost node does), and once the
process has exited, the same command again, as Slurm's `--requeue` or a Kubernetes
restart would run it.

Every fault waits for an event, never for a fixed time beyond a short random
jitter: a trial mid-training in MLflow (`mid-trial`), one more trial FINISHED since
the last fault (`trial-ended`), or the target's start line in its log
(`started`: a kill right after a restart). A process that exits by itself is
never restarted (that would hide it); a fault whose target has gone is skipped, and
the faults left when the chief has exited are not injected.

After the last fault, every process must end within `bound` seconds (else it is
killed and counted as a hang); then MLflow must hold exactly one FINISHED run per
trial, none RUNNING, the parent FINISHED, and each run whole (`check_complete`).
The figures come back either way; with `strict` a failed check raises
`ChaosFailure`, which carries them.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
import signal
import subprocess
import time
import traceback

from servers import SweepProcess, free_port
from test_scale import check_complete, runs, sweep_args

from pipeline.search import auth
from pipeline.tracking import names

CHIEF, PLAIN, PACKED = "chief", "w1", "wp"
ROLES = (CHIEF, PLAIN, PACKED)
TOGETHER = (CHIEF, PACKED)  # A node that ran both is lost, or both are pre-empted.
TARGETS = ((CHIEF,), (PLAIN,), (PACKED,), TOGETHER)
TRIGGERS = ("mid-trial", "mid-trial", "trial-ended", "started")
SIGNALS = (signal.SIGKILL, signal.SIGTERM)
# What a process says once it is under way.
START_LINES = {CHIEF: "serving the oracle to workers", PLAIN: "worker for ",
               PACKED: "worker for "}
SIGTERM_GRACE = 60  # Kubernetes' grace period in deploy/k8s; the docs promise 30 s.
SIGKILL_WAIT = 30
POLL = 0.5
NOISE = re.compile(r"^([IWE]\d{4} .*|WARNING: All log messages before absl.*)$")
MAX_JITTER = 2.0


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault: `signum` to each of `targets`, once `trigger` happened and `jitter`
    seconds passed; then, `restart_jitter` seconds after they exited, each restarted
    in the order of `targets`."""

    targets: tuple
    signum: int
    trigger: str
    jitter: float
    restart_jitter: float

    @property
    def kind(self):
        return f"{signal.Signals(self.signum).name} {'+'.join(sorted(self.targets))}"

    def __str__(self):
        return (f"{self.kind} on {self.trigger} (+{self.jitter:.1f} s, restart "
                f"+{self.restart_jitter:.1f} s, order {','.join(self.targets)})")


def schedule(faults, seed):
    """The faults of one run, from `random.Random(seed)` only.

    With 3 faults or more, the chief and the packed worker go together at least once;
    with 4 or more, the chief, `w1` and `wp` each go alone at least once; with 2 or
    more, both SIGKILL and SIGTERM are sent.
    """
    rng = random.Random(seed)
    targets = [TOGETHER] if faults >= 3 else []
    if faults >= 4:
        targets += [(CHIEF,), (PLAIN,), (PACKED,)]
    targets += [rng.choice(TARGETS) for _ in range(faults - len(targets))]
    rng.shuffle(targets)
    signals = list(SIGNALS[:faults]) + [rng.choice(SIGNALS) for _ in range(faults - 2)]
    rng.shuffle(signals)
    return [Fault(tuple(rng.sample(target, len(target))), signum, rng.choice(TRIGGERS),
                  round(rng.uniform(0, MAX_JITTER), 2), round(rng.uniform(0, MAX_JITTER), 2))
            for target, signum in zip(targets, signals, strict=True)]


@dataclasses.dataclass
class Figures:
    """What one chaos run did and found."""

    seed: int
    planned: int
    trials: int
    injected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list = dataclasses.field(default_factory=list)
    finished_trials: int = 0
    duplicates: int = 0
    running_left: int = 0
    parent_status: str = "?"
    hangs: list = dataclasses.field(default_factory=list)
    wall_seconds: float = 0.0
    exit_codes: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)

    @property
    def faults(self):
        return sum(self.injected.values())

    @property
    def ok(self):
        return not self.problems

    def line(self):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.injected.items())) or "-"
        exits = " ".join(f"{role} {codes}" for role, codes in self.exit_codes.items())
        return (f"seed {self.seed}: faults {self.faults}/{self.planned} ({kinds}); trials "
                f"{self.finished_trials}/{self.trials}; duplicates {self.duplicates}; "
                f"RUNNING {self.running_left}; hangs {len(self.hangs)}; parent "
                f"{self.parent_status}; {self.wall_seconds:.0f} s; exits {exits}; "
                f"{'OK' if self.ok else 'FAILED'}")

    def report(self):
        return "\n".join([self.line(), *(f"  problem: {p}" for p in self.problems),
                          *(f"  {e}" for e in self.events)])


class ChaosFailure(AssertionError):
    def __init__(self, figures):
        super().__init__(figures.report())
        self.figures = figures


def run_chaos(workdir, mnist_path, client, faults, seed, trials=9, epochs=12, bound=180,
              spec="part2-narrow", pack=2, worker_timeout=20, patience=150, strict=True):
    """Runs one sweep under `schedule(faults, seed)`; returns its `Figures`.

    `trials`: at most 9 (Keras Tuner pads the ids of a tenth trial on: "00", which
    `check_complete` does not expect). `epochs`: enough for the faults to land while
    the sweep runs. `patience`: seconds a fault waits for its trigger before it is
    injected anyway.
    """
    if not 1 <= trials <= 9:
        raise ValueError(f"trials must be 1 to 9, not {trials}")
    chaos = _Chaos(workdir, mnist_path, client, trials, epochs, spec, pack, worker_timeout,
                   Figures(seed, faults, trials))
    try:
        chaos.run(schedule(faults, seed), bound, patience)
    finally:
        chaos.kill_all()
    if strict and not chaos.figures.ok:
        raise ChaosFailure(chaos.figures)
    return chaos.figures


class _Chaos:
    def __init__(self, workdir, mnist_path, client, trials, epochs, spec, pack,
                 worker_timeout, figures):
        self.workdir, self.client, self.epochs, self.figures = workdir, client, epochs, figures
        port = free_port()
        common = sweep_args(mnist_path, trials, "--oracle", f"127.0.0.1:{port}",
                            "--worker-timeout", str(worker_timeout), "--threads", "1",
                            spec=spec, epochs=epochs)
        self.commands = {
            CHIEF: [*common, "--role", "chief"],
            PLAIN: [*common, "--role", "worker", "--worker-id", PLAIN, "--pack", "1"],
            PACKED: [*common, "--role", "worker", "--worker-id", PACKED, "--pack", str(pack)],
        }
        self.env = {auth.ENV_TOKEN: auth.new_token()}
        self.lives = {role: [] for role in ROLES}
        self.exits = {}  # SweepProcess -> exit status, once seen.
        self.signalled = set()  # The SweepProcesses this harness signalled.
        self.started = time.monotonic()
        self.finished_before = 0

    # -- processes --------------------------------------------------------------
    def note(self, text):
        self.figures.events.append(f"t={time.monotonic() - self.started:6.1f}s {text}")

    def start(self, role):
        self.lives[role].append(SweepProcess(self.commands[role], self.workdir, self.env))
        self.note(f"start {role} (life {len(self.lives[role])})")

    def current(self, role):
        return self.lives[role][-1]

    def alive(self, role):
        return self.current(role).process.poll() is None

    def reap(self):
        """Records every exit; one the harness did not cause is noted with its last line."""
        for role in ROLES:
            for life, sweep in enumerate(self.lives[role], 1):
                code = sweep.process.poll()
                if code is None or sweep in self.exits:
                    continue
                self.exits[sweep] = code
                if sweep not in self.signalled:
                    self.note(f"{role} (life {life}) exited {code} by itself: "
                              f"{last_line(sweep)}")
                    if code != 0:
                        self.figures.problems.append(
                            f"{role} (life {life}) exited {code} by itself: "
                            f"{last_line(sweep)}")

    def kill_all(self):
        for role in ROLES:
            for sweep in self.lives[role]:
                if sweep.process.poll() is None:
                    self.signalled.add(sweep)
                    sweep.kill()

    # -- the run ----------------------------------------------------------------
    def run(self, faults, bound, patience):
        for role in ROLES:
            self.start(role)
        last = time.monotonic()
        for index, fault in enumerate(faults, 1):
            outcome = self.await_trigger(fault, patience)
            if outcome == "over":
                self.note(f"the chief has exited: faults {index}..{len(faults)} not injected")
                break
            if outcome == "gone" or not self.inject(index, fault, outcome):
                continue
            last = time.monotonic()
        self.finish(last, bound)
        self.check_mlflow()
        self.figures.wall_seconds = time.monotonic() - self.started
        self.figures.exit_codes = {role: [self.exits.get(s) for s in self.lives[role]]
                                   for role in ROLES}

    def await_trigger(self, fault, patience):
        """'fired', 'timeout', 'gone' (a target exited by itself: skipped) or 'over'
        (the chief exited: the sweep is over, one way or another)."""
        deadline = time.monotonic() + patience
        while True:
            self.reap()
            if not self.alive(CHIEF):
                return "over"
            gone = [t for t in fault.targets if not self.alive(t)]
            if gone:
                self.figures.skipped.append(f"{fault.kind}: {', '.join(gone)} had exited")
                self.note(f"skip {fault}: {', '.join(gone)} had exited")
                return "gone"
            if self.fired(fault):
                return "fired"
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(POLL)

    def fired(self, fault):
        if fault.trigger == "started":
            return all(START_LINES[t] in self.current(t).text for t in fault.targets)
        if fault.trigger == "trial-ended":
            return self.finished_count() > self.finished_before
        workers = [t for t in fault.targets if t != CHIEF] or [PLAIN, PACKED]
        return any(run.data.tags.get(names.WORKER, "").split("/")[0] in workers
                   for run in self.mid_trials())

    def mid_trials(self):
        return [run for run in runs(self.client)
                if run.info.status == "RUNNING" and names.LOSS in run.data.metrics
                and len(self.client.get_metric_history(run.info.run_id, names.LOSS))
                < self.epochs]

    def finished_count(self):
        return len([r for r in runs(self.client) if r.info.status == "FINISHED"])

    def inject(self, index, fault, outcome):
        """Signals the targets, waits for them to exit, restarts them; False when a
        target exited by itself in the meantime (the fault is skipped)."""
        time.sleep(fault.jitter)
        self.reap()
        if not all(self.alive(t) for t in fault.targets):
            self.figures.skipped.append(f"{fault.kind}: a target exited during the jitter")
            self.note(f"skip {fault}: a target exited during the jitter")
            return False
        self.note(f"fault {index}: {fault}" + (" (trigger timed out)"
                                                if outcome == "timeout" else ""))
        victims = [self.current(t) for t in fault.targets]
        for sweep in victims:
            self.signalled.add(sweep)
            try:
                sweep.signal_group(fault.signum)
            except ProcessLookupError:
                pass
        for role, sweep in zip(fault.targets, victims, strict=True):
            self.await_exit(role, sweep, fault.signum)
        self.figures.injected[fault.kind] += 1
        self.finished_before = self.finished_count()
        time.sleep(fault.restart_jitter)
        for role in fault.targets:
            self.start(role)
        return True

    def await_exit(self, role, sweep, signum):
        wait = SIGTERM_GRACE if signum == signal.SIGTERM else SIGKILL_WAIT
        try:
            code = sweep.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.figures.hangs.append(f"{role} still running {wait} s after "
                                      f"{signal.Signals(signum).name}: {last_line(sweep)}")
            self.figures.problems.append(self.figures.hangs[-1])
            sweep.kill()
            code = sweep.process.returncode
        self.exits[sweep] = code
        self.note(f"{role} exited {code}: {last_line(sweep)}")
        expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {143, -signal.SIGTERM}
        if code not in expected:
            self.figures.problems.append(f"{role} exited {code} on "
                                         f"{signal.Signals(signum).name}: {last_line(sweep)}")

    def finish(self, last_fault, bound):
        """Every process must end within `bound` s of the last fault, with status 0."""
        deadline = last_fault + bound
        while any(self.alive(r) for r in ROLES) and time.monotonic() < deadline:
            self.reap()
            time.sleep(POLL)
        self.reap()
        for role in ROLES:
            sweep = self.current(role)
            if sweep.process.poll() is None:
                self.figures.hangs.append(f"{role} still running {bound} s after the last "
                                          f"fault: {last_line(sweep)}")
                self.figures.problems.append(self.figures.hangs[-1])
                self.signalled.add(sweep)
                sweep.kill()
                self.exits[sweep] = sweep.process.returncode
                self.note(f"killed {role}: a hang")
        self.note("every process has ended")

    # -- MLflow -----------------------------------------------------------------
    def check_mlflow(self):
        figures, children = self.figures, runs(self.client)
        finished = collections.Counter(r.data.tags[names.TRIAL_ID] for r in children
                                       if r.info.status == "FINISHED")
        figures.finished_trials = len(finished)
        figures.duplicates = sum(n - 1 for n in finished.values())
        figures.running_left = len([r for r in children if r.info.status == "RUNNING"])
        parents = runs(self.client, "parent")
        figures.parent_status = ",".join(sorted(p.info.status for p in parents)) or "none"
        if figures.duplicates:
            figures.problems.append("trials FINISHED more than once: " + ", ".join(
                f"{t} x{n}" for t, n in sorted(finished.items()) if n > 1))
        if figures.running_left:
            figures.problems.append("runs left RUNNING: " + ", ".join(
                f"trial {r.data.tags[names.TRIAL_ID]} on {r.data.tags.get(names.WORKER)}"
                for r in children if r.info.status == "RUNNING"))
        if figures.parent_status != "FINISHED":
            figures.problems.append(f"parent run(s): {figures.parent_status}")
        missing = sorted(set(map(str, range(figures.trials))) - set(finished), key=int)
        if missing:
            figures.problems.append(f"trials without a FINISHED run: {', '.join(missing)}")
        try:
            check_complete(self.client, figures.trials, self.epochs)
        except AssertionError as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            figures.problems.append(f"check_complete failed at `{where.line}`"
                                    + (f": {str(e).splitlines()[0]}" if str(e) else ""))


def last_line(sweep):
    """The last line a process printed (its exit reason, usually), TensorFlow's and
    absl's start-up noise and bare numbers left out."""
    lines = [line.strip() for line in sweep.text.splitlines()
             if line.strip() and not NOISE.match(line.strip())]
    return lines[-1][:200] if lines else "(no output)"
