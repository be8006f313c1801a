"""Answers to a `Document` (Markdown and HTML) with plots; `publish` writes it out."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.report import parameters, plots
from pipeline.report.answers import PART_ONE, PART_TWO
from pipeline.report.document import Document
from pipeline.tracking import names, views

# Figures beside the report (and artifacts of its run).
CURVES = names.CURVES
ACCURACY_VS_PARAMS = "accuracy_vs_params.png"
BEST_SO_FAR = "best_so_far.png"
GRADIENTS = "gradients.png"


def pct(value):
    return "n/a" if value is None else f"{value:.2%}"


def points(value):
    return f"{value * 100:+.2f} points"


def plain_ref(run_id):
    """A run, named by its id."""
    return f"`{run_id}`"


def ui_refs(address, experiment_id):
    """Runs named by their id, linked to their page in MLflow's UI at `address`."""
    return lambda run_id: f"[`{run_id}`]({views.run_link(address, experiment_id, run_id)})"


def missing_command(name, experiment=names.DEFAULT_EXPERIMENT):
    """The commands that run sweep `name` into `experiment`."""
    if experiment == names.DEFAULT_EXPERIMENT:
        return (f"`python -m pipeline sweep {name}` (or `mlflow run . -e sweep "
                f"--env-manager local -P spec={name}`)")
    return (f"`python -m pipeline sweep {name} --experiment '{experiment}'` (or `mlflow "
            f"run . -e sweep --env-manager local --experiment-name '{experiment}' "
            f"-P spec={name}`)")


def render(answers, sweeps, experiment, ref=plain_ref):
    """Builds the report `Document` from `answer()`'s output and the sweeps; `ref`
    names a run (by default its id)."""
    doc = Document("MNIST exercise: answers from MLflow")
    doc.paragraph(f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the "
                  f"runs in experiment `{experiment}`. Every number below is a value "
                  "logged there; each answer names its run.")
    if answers["missing"]:
        doc.heading("Missing sweeps")
        doc.paragraph("These sweeps have no finished trial yet; the answers that need "
                      "them are left out. Run:")
        doc.bullets(f"`{name}`: {missing_command(name, experiment)}"
                    for name in answers["missing"])
    _render_part_one(doc, answers["part1"], ref, experiment)
    _render_part_two(doc, answers, sweeps, ref, experiment)
    parameters.render_correlation(doc, answers, pct, ref)
    _render_part_three(doc, answers["part3"], ref, experiment)
    _render_figures(doc, sweeps, answers)
    return doc


PART_ONE_ROWS = (
    ("best model (by validation accuracy)", lambda m: m["architecture"]),
    ("run", None),  # The run's name, with `ref`.
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


def _not_run(doc, names_, experiment):
    """Says which sweeps of a part have not run, with the commands that run them."""
    doc.paragraph("Not run yet: " + "; ".join(
        f"`{name}`: {missing_command(name, experiment)}" for name in names_) + ".")


def _render_part_one(doc, part1, ref, experiment):
    doc.heading("Part One: one hidden layer, wide (>= 300,000 parameters) and narrow "
                "(< 50,000)")
    if not part1:
        _not_run(doc, PART_ONE, experiment)
        return
    sweeps = list(part1)
    doc.table(["", *sweeps], [[label, *((fmt or (lambda m: ref(m["run_id"])))(part1[n])
                                        for n in sweeps)]
                              for label, fmt in PART_ONE_ROWS])
    if len(sweeps) < len(PART_ONE):
        _not_run(doc, [n for n in PART_ONE if n not in part1], experiment)
    doc.paragraph("Trainable parameters = weights + biases: each Dense layer has "
                  "fan_in x fan_out weights and fan_out biases (784 inputs, 10 outputs). "
                  "A positive training - validation gap means the model fits its "
                  "training images better than unseen ones.")


def _render_part_two(doc, answers, sweeps, ref, experiment):
    doc.heading("Part Two: at least 10 hidden layers, three width bands")
    part2 = answers["part2"]
    if not part2:  # No claim about Part Two without a Part Two run.
        _not_run(doc, PART_TWO, experiment)
        return
    _render_bands(doc, part2, ref)
    if len(part2) < len(PART_TWO):
        _not_run(doc, [n for n in PART_TWO if n not in part2], experiment)
    doc.heading("Why? Vanishing gradients", level=3)
    doc.paragraph(_hypothesis(answers))
    if answers["gradients"]:
        doc.table(["sweep (best model)", "first hidden layer", "output layer",
                   "ratio", "run"],
                  [[name, f"{g['first']:.3g}", f"{g['output']:.3g}", f"{g['ratio']:.3g}",
                    ref(g["run_id"])] for name, g in answers["gradients"].items()])
    if answers["activation"]:
        doc.table(["activation (activation sweep)", "best model", "validation accuracy",
                   "test accuracy", "run"],
                  [[name, m["architecture"], pct(m["val_accuracy"]), pct(m["test_accuracy"]),
                    ref(m["run_id"])] for name, m in answers["activation"].items()])
    series = _gradient_series(sweeps)
    if series:
        doc.figure(GRADIENTS, plots.gradients_by_depth(series, GRADIENT_PANELS),
                   "Mean absolute gradient of each Dense layer's kernel by depth (log "
                   "scale), after the first and the last epoch, of the best model of: "
                   + "; ".join(label for label, _ in series) + ".")


def _render_bands(doc, part2, ref):
    doc.table(["band", "best model", "trainable parameters", "best validation accuracy",
               "best test accuracy", "any above 20%?", "run"],
              [[name, b["best"]["architecture"], f"{b['best']['trainable_params']:,}",
                pct(b["best"]["val_accuracy"]), pct(b["best_test_accuracy"]),
                "yes" if b["beat_chance"] else "no", ref(b["best"]["run_id"])]
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


def _render_part_three(doc, part3, ref, experiment):
    doc.heading("Part Three: at least 3 hidden layers, past 92% on validation and test")
    if part3 is None:
        _not_run(doc, ["part3"], experiment)
        return
    beats = part3["beats_target"]
    doc.paragraph(
        f"Best model: {part3['architecture']} ({part3['trainable_params']:,} parameters, "
        f"run {ref(part3['run_id'])}): validation {pct(part3['val_accuracy'])} "
        f"({'beats' if beats['validation'] else 'does not beat'} 92%), test "
        f"{pct(part3['test_accuracy'])} ({'beats' if beats['test'] else 'does not beat'} "
        "92%).")
    comparison = part3["comparison"]
    doc.table(["network", "model", "test accuracy", "epochs trained (of)",
               "epoch kept (best validation accuracy)", "run"],
              [[name, c["architecture"], pct(c["test_accuracy"]),
                f"{c['epochs_trained']} ({c['epochs']})", str(c["best_epoch"]),
                ref(c["run_id"])]
               for name, c in comparison.items()])
    doc.paragraph(f"Best test accuracy of Parts One and Three: "
                  f"**{part3['best_of_parts_one_and_three']}**.")
    doc.paragraph("Against the best published plain MLPs (sigmoid or similar units, "
                  "SGD, no augmentation, dropout or normalisation):")
    doc.table(["network", "test accuracy", "source", "ours is better"],
              [[r["network"], pct(r["test_accuracy"]), r["source"],
                "yes" if r["beaten"] else "no"] for r in part3["references"]]
              + [[f"ours: {part3['architecture']}", pct(part3["test_accuracy"]),
                  f"run {ref(part3['run_id'])}", ""]])


def _best(trials):
    return max(trials, key=lambda t: t.metrics[names.VAL_ACCURACY])


def _render_figures(doc, sweeps, answers):
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
                   "(by validation accuracy) of: "
                   + "; ".join(title for title, *_ in models) + ".")
    groups = {"Part One": PART_ONE, "Part Two": PART_TWO, "Part Three": ("part3",),
              "activation sweep": ("activation",)}
    points = {label: [(t.metrics[names.TRAINABLE_PARAMS], t.metrics[names.TEST_ACCURACY])
                      for n in group if n in sweeps for t in sweeps[n].trials]
              for label, group in groups.items()}
    points = {label: p for label, p in points.items() if p}
    if points:
        front = [(m["trainable_params"], m["test_accuracy"], m["architecture"])
                 for m in answers["pareto"]]
        doc.figure(ACCURACY_VS_PARAMS, plots.accuracy_vs_params(points, front),
                   "Test accuracy against trainable parameters (log scale), every trial "
                   "of " + ", ".join(f"{label} ({len(p)})" for label, p in points.items())
                   + "; the line is the Pareto front, its models named.")
    if answers["best_so_far"]:
        doc.figure(BEST_SO_FAR, plots.best_so_far(answers["best_so_far"]),
                   "Best validation accuracy so far against elapsed time, at each trial's "
                   "end, of: " + ", ".join(answers["best_so_far"]) + ".")


GRADIENT_PANELS = ("after epoch 1", "after the last epoch")


def _gradient_series(sweeps):
    """The gradients by depth of the best Part Two models, with a Part One model and
    the activation sweep's tanh and relu models when those ran."""
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
        values = dict(zip(GRADIENT_PANELS, (trial.gradients(1),
                                             trial.gradients(trial.epochs_trained)),
                          strict=True))
        if any(values.values()):
            series.append((f"{name}: {trial.label}", values))
    return series
