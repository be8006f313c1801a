"""The report's answer to "is accuracy correlated with parameter count?": a rank
correlation over the sweeps that ran, named with their trial counts, and the Pareto
front (the best test accuracy for at most so many parameters), named model by model.
"""

from __future__ import annotations

from pipeline.report.answers import CLEAR_MIN_TRIALS, CLEAR_P, CLEAR_RHO, PART_TWO

QUESTION = "**Is accuracy correlated with parameter count?**"


def over(sweeps):
    """`sweeps` ({name: trials}) as text: "the 8 trials of part1-narrow"."""
    total = sum(sweeps.values())
    if len(sweeps) == 1:
        (name, count), = sweeps.items()
        return f"the {count} trials of `{name}`"
    parts = ", ".join(f"`{name}` ({count})" for name, count in sweeps.items())
    return f"the {total} trials of {parts}"


def render_correlation(doc, answers, pct, ref):
    """The correlation, over the Part One and Part Two sweeps that ran, and the
    Pareto front over every sweep that ran."""
    doc.heading("Accuracy against parameter count")
    corr = answers["correlation"]
    if not corr["sweeps"]:
        doc.paragraph(f"{QUESTION} No Part One or Part Two sweep has run yet.")
    elif corr["rho"] is None:
        doc.paragraph(f"{QUESTION} Not enough trials to say: {over(corr['sweeps'])}.")
    else:
        doc.paragraph(f"{QUESTION} " + _verdict(corr) + _part_two_note(answers))
    front = answers["pareto"]
    if front:
        doc.paragraph("The Pareto front of the plot below: each model here is the most "
                      "accurate on test data of all trials with at most its parameters.")
        doc.table(["model", "sweep", "trainable parameters", "test accuracy", "run"],
                  [[m["architecture"], m["sweep"], f"{m['trainable_params']:,}",
                    pct(m["test_accuracy"]), ref(m["run_id"])] for m in front])


def _verdict(corr):
    if corr["n"] < CLEAR_MIN_TRIALS:
        verdict = (f"too few trials to call any correlation clear (at least "
                   f"{CLEAR_MIN_TRIALS} are needed)")
    else:
        verdict = ("a clear correlation" if corr["clear"] else "no clear correlation") + (
            f" (clear means p < {CLEAR_P} and |rho| >= {CLEAR_RHO})")
    test = "exact permutation test" if corr.get("exact") else "permutation test"
    return (f"Over {over(corr['sweeps'])}, Spearman's rho between trainable parameters "
            f"and test accuracy is {corr['rho']:.3f} (p = {corr['p_value']:.2g}, {test}): "
            f"{verdict}.")


def _part_two_note(answers):
    """What the Part Two bands that ran add, if they all stayed near chance."""
    bands = answers["part2"]
    if not bands or any(band["beat_chance"] for band in bands.values()):
        return ""
    largest = max(m["trainable_params"] for band in bands.values() for m in band["trials"])
    names = ", ".join(f"`{name}`" for name in PART_TWO if name in bands)
    return (f" Size alone does not decide it: every trial of {names}, up to "
            f"{largest:,} parameters, stayed at or below 20%.")
