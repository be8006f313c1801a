"""Answers to a `Document` (Markdown and HTML) with plots, written out and logged to MLflow."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.report import plots
from pipeline.report.answers import CLEAR_MIN_TRIALS, CLEAR_P, CLEAR_RHO, PART_ONE, PART_TWO, answer
from pipeline.report.document import Document
from pipeline.report.load import load_sweeps
from pipeline.tracking import names

MARKDOWN, HTML, JSON = names.REPORT_FILES
# Figures beside the report (and artifacts of its run).
CURVES = names.CURVES
ACCURACY_VS_PARAMS = "accuracy_vs_params.png"
GRADIENTS = "gradients.png"
REPORT_TAG_VALUE = "exercise"  # tags.report = 'exercise' marks the report's run.


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


PART_ONE_ROWS = (
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
)


def _render_part_one(doc, part1):
    doc.heading("Part One: one hidden layer, wide (>= 300,000 parameters) and narrow "
                "(< 50,000)")
    if not part1:
        doc.paragraph("No Part One sweep has run yet.")
        return
    sweeps = list(part1)
    doc.table(["", *sweeps], [[label, *(fmt(part1[n]) for n in sweeps)]
                              for label, fmt in PART_ONE_ROWS])
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
        _render_bands(doc, part2)
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
        doc.figure(GRADIENTS, figure, "Mean absolute gradient of each Dense layer's "
                   "kernel by depth (log scale), Part Two bands next to a Part One model "
                   "and the tanh/relu models of the activation sweep.")


def _render_bands(doc, part2):
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
            f"{_ratio_range(min(deep), max(deep))} times the output layer's in the best "
            f"Part Two models" + (f", against {max(shallow):.2g} in a Part One model"
                                  if shallow else "") + ".")
    acts = answers["activation"]
    if acts and "sigmoid" in acts:
        others = {n: m for n, m in acts.items() if n != "sigmoid"}
        if others:
            evidence.append(_activation_evidence(acts["sigmoid"], others))
    if not evidence:
        return text + " (Run the Part Two and activation sweeps for the evidence.)"
    return text + " Evidence: " + " ".join(evidence)


def _activation_evidence(sigmoid, others):
    better = [n for n, m in others.items()
              if m["val_accuracy"] > sigmoid["val_accuracy"] + 0.05]
    return (f"At the same depth, the activation sweep's best sigmoid model reaches "
            f"{pct(sigmoid['val_accuracy'])} validation accuracy; "
            + ", ".join(f"{n} {pct(m['val_accuracy'])}" for n, m in others.items())
            + (f". {' and '.join(better)} {'learns' if len(better) == 1 else 'learn'} "
               "where sigmoid does not, which supports "
               "the hypothesis: the depth itself is trainable, the activation is what "
               "stops the gradient." if better else
               ". No other activation does clearly better here, so this run does not "
               "support the hypothesis."))


def _ratio_range(low, high):
    """A range as text; a range of one value is that value."""
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g} to {high:.2g}"


def _render_correlation(doc, corr):
    if corr["rho"] is None:
        doc.paragraph(f"**Is accuracy correlated with parameter count?** Not enough trials "
                      f"({corr['n']}) to say.")
        return
    if corr["n"] < CLEAR_MIN_TRIALS:
        verdict = (f"too few trials to call any correlation clear (at least "
                   f"{CLEAR_MIN_TRIALS} are needed)")
    else:
        verdict = ("a clear correlation" if corr["clear"] else "no clear correlation")
    test = "exact permutation test" if corr.get("exact") else "permutation test"
    doc.paragraph(
        f"**Is accuracy correlated with parameter count?** Over all {corr['n']} Part One "
        f"and Part Two trials, Spearman's rho between trainable parameters and test "
        f"accuracy is {corr['rho']:.3f} (p = {corr['p_value']:.2g}, {test}): {verdict} "
        f"(clear means at least {CLEAR_MIN_TRIALS} trials, p < {CLEAR_P} and "
        f"|rho| >= {CLEAR_RHO}). Depth and activation matter more than size: the Part Two "
        "networks are not small, yet they stay near chance.")


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
    doc.table(["network", "model", "test accuracy", "epochs trained (of)",
               "epoch kept (best validation accuracy)", "run"],
              [[name, c["architecture"], pct(c["test_accuracy"]),
                f"{c['epochs_trained']} ({c['epochs']})", str(c["best_epoch"]),
                f"`{c['run_id']}`"]
               for name, c in comparison.items()])
    doc.paragraph(f"Best test accuracy of Parts One and Three: "
                  f"**{part3['best_of_parts_one_and_three']}**.")
    doc.paragraph("Against the best published plain MLPs (sigmoid or similar units, "
                  "SGD, no augmentation, dropout or normalisation):")
    doc.table(["network", "test accuracy", "source", "ours is better"],
              [[r["network"], pct(r["test_accuracy"]), r["source"],
                "yes" if r["beaten"] else "no"] for r in part3["references"]]
              + [[f"ours: {part3['architecture']}", pct(part3["test_accuracy"]),
                  f"run {run_ref(part3)}", ""]])


def _best(trials):
    return max(trials, key=lambda t: t.metrics[names.VAL_ACCURACY])


def _render_figures(doc, sweeps):
    doc.heading("Plots")
    models = []
    for title, group in (("Part One, wide", ("part1-wide",)),
                         ("Part One, narrow", ("part1-narrow",)),
                         ("Part Two", PART_TWO), ("Part Three", ("part3",))):
        candidates = [sweeps[n].best for n in group if n in sweeps]
        if candidates:
            best = _best(candidates)
            models.append((f"{title}: {best.label}", *best.curves()))
    if models:
        doc.figure(CURVES, plots.best_model_curves(models),
                   "Training vs validation accuracy and loss per epoch, best model "
                   "(by validation accuracy) of each part.")
    groups = {"Part One": PART_ONE, "Part Two": PART_TWO, "Part Three": ("part3",),
              "activation sweep": ("activation",)}
    doc.figure(ACCURACY_VS_PARAMS, plots.accuracy_vs_params({
        label: [(t.metrics[names.TRAINABLE_PARAMS], t.metrics[names.TEST_ACCURACY])
                for n in group if n in sweeps for t in sweeps[n].trials]
        for label, group in groups.items()}),
        "Test accuracy against trainable parameters (log scale), every trial, by part.")


def _gradient_figure(sweeps):
    chosen = [(n, sweeps[n].best) for n in PART_TWO if n in sweeps]
    part_one = [sweeps[n].best for n in PART_ONE if n in sweeps]
    if part_one:
        chosen.append(("Part One", _best(part_one)))
    if "activation" in sweeps:
        for activation in ("tanh", "relu"):
            trials = [t for t in sweeps["activation"].trials
                      if t.params[names.ACTIVATION] == activation]
            if trials:
                chosen.append((f"activation sweep, {activation}", _best(trials)))
    series = []
    for name, trial in chosen:
        last = int(trial.params[names.EPOCHS])
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
    files = _write_files(doc, answers, out)
    run_id = _report_run(experiment, launcher_run_id)
    client = MlflowClient()
    status = "FAILED"
    try:
        for name in files:
            client.log_artifact(run_id, str(out / name))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return out, run_id, answers


def _write_files(doc, answers, out):
    """Writes the report's files into `out` all at once; returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    files = [MARKDOWN, HTML, JSON, *(i.filename for i in doc.images)]
    # Write everything beside the target first, then move it in: no half reports.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staging = Path(tmp)
        for image in doc.images:
            (staging / image.filename).write_bytes(image.png)
        (staging / MARKDOWN).write_text(doc.to_markdown())
        (staging / HTML).write_text(doc.to_html())
        (staging / JSON).write_text(json.dumps(answers, indent=2))
        for name in files:
            (staging / name).replace(out / name)
    return files


def _report_run(experiment, launcher_run_id):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    if launcher_run_id and client.get_run(launcher_run_id).info.experiment_id == exp_id:
        client.update_run(launcher_run_id, name=names.REPORT)
        client.set_tag(launcher_run_id, names.REPORT, REPORT_TAG_VALUE)
        return launcher_run_id
    run_id = client.create_run(exp_id, run_name=names.REPORT,
                               tags={names.REPORT: REPORT_TAG_VALUE}).info.run_id
    if launcher_run_id:
        client.set_tag(launcher_run_id, names.REPORT_RUN_ID, run_id)
    return run_id
