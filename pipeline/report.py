"""MLflow runs in, the exercise's answers and plots out.

Every number comes from what the exercise sweeps logged, read through
`mlflow.search_runs` and `MlflowClient.get_metric_history` (nothing is cached on
the side), and each answer names the run it came from. A sweep that has not been
run is named as missing, with the command that runs it; the rest is still answered.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from scipy import stats

from pipeline import plots
from pipeline.document import Document
from pipeline.spec import EXERCISE

PART_ONE = ("part1-wide", "part1-narrow")
PART_TWO = ("part2-narrow", "part2-medium", "part2-wide")
CHANCE = 0.2  # "Did any beat 20% accuracy?"
TARGET = 0.92  # Part Three: better than 92% on validation and test.
# A Spearman correlation counts as "clear" when it is both significant and strong.
CLEAR_P, CLEAR_RHO = 0.05, 0.5


@dataclass
class Trial:
    """One finished trial run, with lazily read per-epoch histories."""

    run: object
    client: MlflowClient = field(repr=False)
    _history: dict = field(default_factory=dict, repr=False)

    @property
    def run_id(self):
        return self.run.info.run_id

    @property
    def sweep(self):
        return self.run.data.tags["sweep"]

    @property
    def trial_id(self):
        return self.run.data.tags["trial_id"]

    @property
    def params(self):
        return self.run.data.params

    @property
    def metrics(self):
        return self.run.data.metrics

    @property
    def hidden_layers(self):
        return int(self.params["hidden_layers"])

    @property
    def label(self):
        units = self.params["units"].split(",")
        shape = f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(units)
        return f"{shape} {self.params['activation']}"

    def history(self, key):
        """[(step, value)] of a per-epoch metric, in step order."""
        if key not in self._history:
            points = self.client.get_metric_history(self.run_id, key)
            self._history[key] = sorted((m.step, m.value) for m in points)
        return self._history[key]

    def curves(self):
        keys = ("accuracy", "val_accuracy", "loss", "val_loss")
        histories = {k: self.history(k) for k in keys}
        return [s for s, _ in histories["accuracy"]], {
            k: [v for _, v in h] for k, h in histories.items()}

    def at_step(self, key, step):
        return next((v for s, v in self.history(key) if s == step), None)

    def best_epoch(self, key="val_accuracy"):
        """The first epoch at which `key` reached its best value."""
        history = self.history(key)
        best = max(v for _, v in history)
        return next(s for s, v in history if v == best)

    def gradients(self, step):
        values = []
        while (v := self.at_step(f"grad_mean_abs_layer_{len(values)}", step)) is not None:
            values.append(v)
        return values


@dataclass
class Sweep:
    name: str
    parent_run_id: str
    trials: list

    @property
    def best(self):
        return max(self.trials, key=lambda t: t.metrics["val_accuracy"], default=None)


def load_sweeps(experiment):
    """Finds the latest parent run of each exercise sweep and its finished trials.

    Returns:
        A dict from sweep name to `Sweep`, for the sweeps that have a finished trial.
    """
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id],
                              filter_string="tags.sweep != ''", output_format="list")
    sweeps = {}
    for name in EXERCISE:
        parents = [r for r in runs if r.data.tags.get("sweep") == name
                   and "trial_id" not in r.data.tags]
        for parent in sorted(parents, key=lambda r: r.info.start_time, reverse=True):
            trials = [Trial(r, client) for r in runs
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                      and "trial_id" in r.data.tags and r.info.status == "FINISHED"
                      and "val_accuracy" in r.data.metrics]
            if trials:
                sweeps[name] = Sweep(name, parent.info.run_id, trials)
                break
    return sweeps


def answer(sweeps):
    """Computes every answer of the exercise from the loaded sweeps.

    Returns:
        A JSON-serialisable dict; `report.json` holds it as written.
    """
    answers = {"missing": [name for name in EXERCISE if name not in sweeps]}
    answers["part1"] = {name: _part_one(sweeps[name].best) for name in PART_ONE
                        if name in sweeps}
    answers["part2"] = {name: _band(sweeps[name]) for name in PART_TWO if name in sweeps}
    answers["activation"] = _activations(sweeps.get("activation"))
    answers["gradients"] = _gradient_ratios(sweeps)
    answers["correlation"] = _correlation(
        [t for name in PART_ONE + PART_TWO if name in sweeps for t in sweeps[name].trials])
    answers["part3"] = _part_three(sweeps)
    return answers


def _model(trial):
    m = trial.metrics
    return {
        "run_id": trial.run_id, "sweep": trial.sweep, "trial_id": trial.trial_id,
        "architecture": trial.label, "hidden_layers": trial.hidden_layers,
        "units": trial.params["units"],
        "trainable_params": int(m["trainable_params"]), "weights": int(m["weights"]),
        "biases": int(m["biases"]), "epochs": int(trial.params["epochs"]),
        "accuracy": m["accuracy"], "val_accuracy": m["val_accuracy"],
        "test_accuracy": m["test_accuracy"],
    }


def _part_one(best):
    model = _model(best)
    model.update({
        "val_accuracy_epoch_10": best.at_step("val_accuracy", 10),
        "train_val_gap": model["accuracy"] - model["val_accuracy"],
        "test_val_gap": model["test_accuracy"] - model["val_accuracy"],
        "median_epoch_seconds": statistics.median(v for _, v in best.history("epoch_seconds")),
        "best_epoch": best.best_epoch(),
    })
    return model


def _band(sweep):
    trials = sorted(sweep.trials, key=lambda t: t.metrics["trainable_params"])
    return {
        "best": _model(sweep.best),
        "best_test_accuracy": max(t.metrics["test_accuracy"] for t in trials),
        "beat_chance": any(max(t.metrics["val_accuracy"], t.metrics["test_accuracy"]) > CHANCE
                           for t in trials),
        "trials": [_model(t) for t in trials],
    }


def _activations(sweep):
    if sweep is None:
        return None
    best = {}
    for trial in sweep.trials:
        name = trial.params["activation"]
        if name not in best or trial.metrics["val_accuracy"] > best[name].metrics["val_accuracy"]:
            best[name] = trial
    return {name: _model(trial) for name, trial in sorted(best.items())}


def _gradient_ratios(sweeps):
    """First hidden layer's gradient over the output layer's, after epoch 1."""
    ratios = {}
    for name in PART_ONE + PART_TWO:
        if name in sweeps:
            grads = sweeps[name].best.gradients(step=1)
            if len(grads) >= 2 and grads[-1] > 0:
                ratios[name] = {"run_id": sweeps[name].best.run_id,
                                "first": grads[0], "output": grads[-1],
                                "ratio": grads[0] / grads[-1]}
    return ratios


def _correlation(trials):
    points = [(t.metrics["trainable_params"], t.metrics["test_accuracy"]) for t in trials]
    if len(points) < 3 or len({p for p, _ in points}) < 2:
        return {"n": len(points), "rho": None, "p_value": None, "clear": False}
    rho, p_value = stats.spearmanr(*zip(*points, strict=True))
    rho, p_value = float(rho), float(p_value)
    clear = not math.isnan(rho) and p_value < CLEAR_P and abs(rho) >= CLEAR_RHO
    return {"n": len(points), "rho": rho, "p_value": p_value, "clear": clear}


def _part_three(sweeps):
    if "part3" not in sweeps:
        return None
    deep = [t for t in sweeps["part3"].trials if t.hidden_layers >= 3]
    best = max(deep, key=lambda t: t.metrics["val_accuracy"])
    model = _model(best)
    model["best_epoch"] = best.best_epoch()
    model["beats_target"] = {"validation": model["val_accuracy"] > TARGET,
                             "test": model["test_accuracy"] > TARGET}
    contenders = {"part3": best, **{n: sweeps[n].best for n in PART_ONE if n in sweeps}}
    model["comparison"] = {
        name: {"run_id": t.run_id, "architecture": t.label,
               "test_accuracy": t.metrics["test_accuracy"], "best_epoch": t.best_epoch(),
               "epochs": int(t.params["epochs"])}
        for name, t in contenders.items()}
    model["best_of_parts_one_and_three"] = max(
        model["comparison"], key=lambda n: model["comparison"][n]["test_accuracy"])
    return model


# ---------------------------------------------------------------------------
# Rendering


def pct(value):
    return "n/a" if value is None else f"{value:.2%}"


def points(value):
    return f"{value * 100:+.2f} points"


def run_ref(model):
    return f"`{model['run_id']}`"


def missing_command(name):
    return (f"`python -m pipeline sweep {name}` (or `mlflow run . -e sweep "
            f"--env-manager local -P spec={name}`)")


def render(answers, sweeps, experiment):
    """Builds the report `Document` from `answer()`'s output and the sweeps."""
    doc = Document("MNIST exercise: answers from MLflow")
    doc.paragraph(f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the "
                  f"runs in experiment `{experiment}`. Every number below is a value "
                  "logged there; each answer names its run.")
    if answers["missing"]:
        doc.heading("Missing sweeps")
        doc.paragraph("These sweeps have no finished trial yet; the answers that need "
                      "them are left out. Run:")
        doc.bullets(f"`{name}`: {missing_command(name)}" for name in answers["missing"])
    _render_part_one(doc, answers["part1"])
    _render_part_two(doc, answers, sweeps)
    _render_part_three(doc, answers["part3"])
    _render_figures(doc, sweeps)
    return doc


def _render_part_one(doc, part1):
    doc.heading("Part One: one hidden layer, wide (>= 300,000 parameters) and narrow "
                "(< 50,000)")
    if not part1:
        doc.paragraph("No Part One sweep has run yet.")
        return
    names = list(part1)
    rows = [
        ("best model (by validation accuracy)", lambda m: m["architecture"]),
        ("run", run_ref),
        ("trainable parameters", lambda m: f"{m['trainable_params']:,}"),
        ("weights", lambda m: f"{m['weights']:,}"),
        ("biases", lambda m: f"{m['biases']:,}"),
        ("validation accuracy after epoch 10", lambda m: pct(m["val_accuracy_epoch_10"])
         if m["val_accuracy_epoch_10"] is not None else f"n/a ({m['epochs']} epochs run)"),
        ("training accuracy (last epoch)", lambda m: pct(m["accuracy"])),
        ("validation accuracy (last epoch)", lambda m: pct(m["val_accuracy"])),
        ("training - validation gap", lambda m: points(m["train_val_gap"])),
        ("test accuracy", lambda m: pct(m["test_accuracy"])),
        ("test - validation gap", lambda m: points(m["test_val_gap"])),
        ("median seconds per epoch", lambda m: f"{m['median_epoch_seconds']:.2f} s"),
    ]
    doc.table(["", *names], [[label, *(fmt(part1[n]) for n in names)]
                             for label, fmt in rows])
    doc.paragraph("Trainable parameters = weights + biases: each Dense layer has "
                  "fan_in x fan_out weights and fan_out biases (784 inputs, 10 outputs). "
                  "A positive training - validation gap means the model fits its "
                  "training images better than unseen ones.")


def _render_part_two(doc, answers, sweeps):
    doc.heading("Part Two: at least 10 hidden layers, three width bands")
    part2 = answers["part2"]
    if not part2:
        doc.paragraph("No Part Two sweep has run yet.")
    else:
        doc.table(["band", "best model", "trainable parameters", "best validation accuracy",
                   "best test accuracy", "any above 20%?", "run"],
                  [[name, b["best"]["architecture"], f"{b['best']['trainable_params']:,}",
                    pct(b["best"]["val_accuracy"]), pct(b["best_test_accuracy"]),
                    "yes" if b["beat_chance"] else "no", run_ref(b["best"])]
                   for name, b in part2.items()])
        beaten = [n for n, b in part2.items() if b["beat_chance"]]
        doc.paragraph("**Did any beat 20% accuracy?** "
                      + (f"Yes: {', '.join(beaten)}." if beaten else
                         "No: every trial of every band stayed at or below 20% on "
                         "validation and test data (chance is 10%)."))
        doc.paragraph("Parameters of each trial:")
        doc.table(["band", "trial", "units per layer", "trainable parameters",
                   "validation accuracy", "test accuracy"],
                  [[name, m["trial_id"], m["units"], f"{m['trainable_params']:,}",
                    pct(m["val_accuracy"]), pct(m["test_accuracy"])]
                   for name, b in part2.items() for m in b["trials"]])
    doc.heading("Why? Vanishing gradients", level=3)
    doc.paragraph(_hypothesis(answers))
    if answers["gradients"]:
        doc.table(["sweep (best model)", "first hidden layer", "output layer",
                   "ratio", "run"],
                  [[name, f"{g['first']:.3g}", f"{g['output']:.3g}", f"{g['ratio']:.3g}",
                    f"`{g['run_id']}`"] for name, g in answers["gradients"].items()])
    if answers["activation"]:
        doc.table(["activation (activation sweep)", "best model", "validation accuracy",
                   "test accuracy", "run"],
                  [[name, m["architecture"], pct(m["val_accuracy"]), pct(m["test_accuracy"]),
                    run_ref(m)] for name, m in answers["activation"].items()])
    _render_correlation(doc, answers["correlation"])
    figure = _gradient_figure(sweeps)
    if figure is not None:
        doc.figure("gradients.png", figure, "Mean absolute gradient of each Dense layer's "
                   "kernel by depth (log scale), Part Two bands next to a Part One model "
                   "and the tanh/relu models of the activation sweep.")


def _hypothesis(answers):
    text = ("Hypothesis: with sigmoid activations, the gradient vanishes on its way back "
            "through 10 or more layers. Sigmoid's derivative is at most 0.25, so each "
            "layer scales the back-propagated gradient down; the first layers barely "
            "change, and a network this deep learns little in 10 epochs of plain SGD, "
            "however many parameters it has.")
    evidence = []
    grads = answers["gradients"]
    deep = [grads[n]["ratio"] for n in PART_TWO if n in grads]
    shallow = [grads[n]["ratio"] for n in PART_ONE if n in grads]
    if deep:
        evidence.append(
            f"After the first epoch, the first hidden layer's mean gradient is "
            f"{min(deep):.2g} to {max(deep):.2g} times the output layer's in the best "
            f"Part Two models" + (f", against {max(shallow):.2g} in a Part One model"
                                  if shallow else "") + ".")
    acts = answers["activation"]
    if acts and "sigmoid" in acts:
        others = {n: m for n, m in acts.items() if n != "sigmoid"}
        if others:
            better = [n for n, m in others.items()
                      if m["val_accuracy"] > acts["sigmoid"]["val_accuracy"] + 0.05]
            evidence.append(
                f"At the same depth, the activation sweep's best sigmoid model reaches "
                f"{pct(acts['sigmoid']['val_accuracy'])} validation accuracy; "
                + ", ".join(f"{n} {pct(m['val_accuracy'])}" for n, m in others.items())
                + (f". {' and '.join(better)} {'learns' if len(better) == 1 else 'learn'} "
                   "where sigmoid does not, which supports "
                   "the hypothesis: the depth itself is trainable, the activation is what "
                   "stops the gradient." if better else
                   ". No other activation does clearly better here, so this run does not "
                   "support the hypothesis."))
    if not evidence:
        return text + " (Run the Part Two and activation sweeps for the evidence.)"
    return text + " Evidence: " + " ".join(evidence)


def _render_correlation(doc, corr):
    if corr["rho"] is None:
        doc.paragraph(f"**Is accuracy correlated with parameter count?** Not enough trials "
                      f"({corr['n']}) to say.")
        return
    verdict = "a clear" if corr["clear"] else "no clear"
    doc.paragraph(
        f"**Is accuracy correlated with parameter count?** Over all {corr['n']} Part One "
        f"and Part Two trials, Spearman's rho between trainable parameters and test "
        f"accuracy is {corr['rho']:.3f} (p = {corr['p_value']:.3g}): {verdict} "
        f"correlation (clear means p < {CLEAR_P} and |rho| >= {CLEAR_RHO}). Depth and "
        "activation matter more than size: the Part Two networks are not small, yet "
        "they stay near chance.")


def _render_part_three(doc, part3):
    doc.heading("Part Three: at least 3 hidden layers, past 92% on validation and test")
    if part3 is None:
        doc.paragraph(f"Not run yet: {missing_command('part3')}.")
        return
    beats = part3["beats_target"]
    doc.paragraph(
        f"Best model: {part3['architecture']} ({part3['trainable_params']:,} parameters, "
        f"run {run_ref(part3)}): validation {pct(part3['val_accuracy'])} "
        f"({'beats' if beats['validation'] else 'does not beat'} 92%), test "
        f"{pct(part3['test_accuracy'])} ({'beats' if beats['test'] else 'does not beat'} "
        "92%).")
    comparison = part3["comparison"]
    doc.table(["network", "model", "test accuracy", "epoch of best validation accuracy",
               "run"],
              [[name, c["architecture"], pct(c["test_accuracy"]),
                f"{c['best_epoch']} of {c['epochs']}", f"`{c['run_id']}`"]
               for name, c in comparison.items()])
    doc.paragraph(f"Best test accuracy of Parts One and Three: "
                  f"**{part3['best_of_parts_one_and_three']}**.")


def _render_figures(doc, sweeps):
    doc.heading("Plots")
    models = []
    for title, names in (("Part One, wide", ("part1-wide",)),
                         ("Part One, narrow", ("part1-narrow",)),
                         ("Part Two", PART_TWO), ("Part Three", ("part3",))):
        candidates = [sweeps[n].best for n in names if n in sweeps]
        if candidates:
            best = max(candidates, key=lambda t: t.metrics["val_accuracy"])
            models.append((f"{title}: {best.label}", *best.curves()))
    if models:
        doc.figure("curves.png", plots.best_model_curves(models),
                   "Training vs validation accuracy and loss per epoch, best model "
                   "(by validation accuracy) of each part.")
    groups = {"Part One": PART_ONE, "Part Two": PART_TWO, "Part Three": ("part3",),
              "activation sweep": ("activation",)}
    doc.figure("accuracy_vs_params.png", plots.accuracy_vs_params({
        label: [(t.metrics["trainable_params"], t.metrics["test_accuracy"])
                for n in names if n in sweeps for t in sweeps[n].trials]
        for label, names in groups.items()}),
        "Test accuracy against trainable parameters (log scale), every trial, by part.")


def _gradient_figure(sweeps):
    series = []
    chosen = [(n, sweeps[n].best) for n in PART_TWO if n in sweeps]
    part_one = [sweeps[n].best for n in PART_ONE if n in sweeps]
    if part_one:
        chosen.append(("Part One", max(part_one, key=lambda t: t.metrics["val_accuracy"])))
    if "activation" in sweeps:
        for activation in ("tanh", "relu"):
            trials = [t for t in sweeps["activation"].trials
                      if t.params["activation"] == activation]
            if trials:
                chosen.append((f"activation sweep, {activation}",
                               max(trials, key=lambda t: t.metrics["val_accuracy"])))
    for name, trial in chosen:
        last = int(trial.params["epochs"])
        series.append((f"{name}: {trial.label}",
                       {"after epoch 1": trial.gradients(1),
                        "after the last epoch": trial.gradients(last)}))
    if not series:
        return None
    return plots.gradients_by_depth(series, ("after epoch 1", "after the last epoch"))


def write(experiment, out_dir, launcher_run_id=None):
    """Writes `report.md`, `report.html` and `report.json` and logs them to MLflow.

    The files go to `out_dir` and are logged as artifacts of a run named `report`
    in the same experiment (the `mlflow run` launcher run, if it is there).

    Returns:
        (the output directory, the report run's id, the answers).
    """
    sweeps = load_sweeps(experiment)
    answers = answer(sweeps)
    doc = render(answers, sweeps, experiment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["report.md", "report.html", "report.json", *(i.filename for i in doc.images)]
    # Write everything beside the target first, then move it in: no half reports.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staging = Path(tmp)
        for image in doc.images:
            (staging / image.filename).write_bytes(image.png)
        (staging / "report.md").write_text(doc.to_markdown())
        (staging / "report.html").write_text(doc.to_html())
        (staging / "report.json").write_text(json.dumps(answers, indent=2))
        for name in names:
            (staging / name).replace(out / name)
    run_id = _report_run(experiment, launcher_run_id)
    client = MlflowClient()
    status = "FAILED"
    try:
        for name in names:
            client.log_artifact(run_id, str(out / name))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return out, run_id, answers


def _report_run(experiment, launcher_run_id):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    if launcher_run_id and client.get_run(launcher_run_id).info.experiment_id == exp_id:
        client.update_run(launcher_run_id, name="report")
        client.set_tag(launcher_run_id, "report", "exercise")
        return launcher_run_id
    run_id = client.create_run(exp_id, run_name="report",
                               tags={"report": "exercise"}).info.run_id
    if launcher_run_id:
        client.set_tag(launcher_run_id, "report_run_id", run_id)
    return run_id
