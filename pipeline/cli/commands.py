"""Command line: `python -m pipeline sweep|list|exercise|report|ui`.

Thin by design: options are validated here, at the edge, and handed to
`pipeline.sweep` and `pipeline.report`. Every error a user can act on is a
`PipelineError`, caught once (`SweepCli.invoke`) and printed as one line with its
exit status: 2 for bad input, before anything is written to MLflow. Click's own
usage errors (an unknown option, a bad number) are cut to that one line too.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import click

from pipeline import data as data_module
from pipeline.cli.options import (
    MAX_WORKERS,
    Seconds,
    experiment_name,
    from_spec,
    oracle_address,
    sweep_options,
)
from pipeline.errors import InputError, Interrupted, PipelineError
from pipeline.spec import load as specfile
from pipeline.spec.schema import EXERCISE
from pipeline.tracking import names


def _none_if_zero(value):
    return value or None


def load_spec(name, max_trials=0, epochs=0, seed=0):
    """Loads a spec with CLI overrides; rejects constraints no configuration meets."""
    from pipeline import space

    spec = specfile.load(name).with_overrides(max_trials=max_trials, epochs=epochs, seed=seed)
    space.check_reachable(spec)
    space.build(spec)
    return spec


def load_data(path, validation_split, train_limit):
    return data_module.load(path or None, validation_split, _none_if_zero(train_limit))


def _one_line(error):
    """A click usage error as one line on stderr, `Error: ...`, and its exit status (2):
    without click's usage and "Try --help" lines."""
    one = click.ClickException(" ".join(error.format_message().splitlines()))
    one.exit_code = error.exit_code
    return one


class SweepCli(click.Group):
    """The command group; turns a `PipelineError` or a usage error into one line and
    its exit status. `--help`, and no command at all, still show the help."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:  # The group's own options.
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as e:
            raise _one_line(click.BadParameter(str(e), param_hint=e.param)) from None
        except click.UsageError as e:  # A command's options and arguments, or its name.
            raise _one_line(e) from None
        except PipelineError as e:
            error = click.ClickException(str(e))
            error.exit_code = e.exit_code
            raise error from None
        except Interrupted:
            click.echo("stopped by SIGTERM; run the same command again to resume", err=True)
            raise SystemExit(Interrupted.exit_code) from None
        except KeyboardInterrupt:  # The runs were closed KILLED on the way out.
            click.echo("stopped by Ctrl-C; run the same command again to resume", err=True)
            raise SystemExit(128 + signal.SIGINT) from None


@click.group(cls=SweepCli)
def cli():
    """Keras Tuner sweeps over MLP depth, width and activation on MNIST, every
    trial tracked in MLflow."""
    from pipeline.cli import quiet
    from pipeline.tracking import server

    quiet.libraries(quiet.verbose(sys.argv[1:]))
    server.secure_tracking_uri()
    server.bound_requests()


def check_tracking():
    """Stops with one line if the tracking server does not answer (exit 1)."""
    from pipeline.tracking import server

    server.check_reachable()


def _range_text(low, high, spec=""):
    """`low..high`; a range of one value is that value."""
    return f"{low:{spec}}" if low == high else f"{low:{spec}}..{high:{spec}}"


@cli.command("list")
def list_specs():
    """List the shipped sweep specs and their constraints."""
    from pipeline import space

    for path in specfile.available():
        try:
            spec = specfile.load(path)
            space.check_reachable(spec)
            low, high = space.build(spec).param_bounds()
        except InputError as e:
            click.echo(f"{path.stem}: INVALID: {e}")
            continue
        s, c, t = spec.search_space, spec.constraints, spec.tuner
        layers = _range_text(max(s.hidden_layers.min, c.min_hidden_layers),
                             min(s.hidden_layers.max, c.max_hidden_layers or s.hidden_layers.max))
        units = _range_text(max(s.units.min, c.min_units),
                            min(s.units.max, c.max_units or s.units.max))
        click.echo(
            f"{spec.name:<14} part {spec.part or '-'}  {t.algorithm} x{t.max_trials}  "
            f"layers {layers}  units {units}  activation {'/'.join(s.activation.values)}  "
            f"params {_range_text(low, high, ',')}  epochs {spec.training.epochs}")
        click.echo(f"{'':<14} {spec.description.splitlines()[0]}")


@cli.command()
@click.argument("spec", metavar="SPEC")
@sweep_options
@click.option("--workers", type=from_spec(MAX_WORKERS), default=0, show_default=True,
              help="Run N worker processes and a chief on this machine (Keras Tuner's "
                   "distributed mode); 0 = one process.")
@click.option("--role", type=click.Choice(["chief", "worker"]),
              help="This process's part in a distributed sweep started by a scheduler.")
@click.option("--oracle", callback=oracle_address, metavar="HOST:PORT",
              help="The chief's oracle address (with --role).")
@click.option("--worker-id", default=None,
              help="A worker's id, unique in the sweep (default: worker-<host>-<pid>).")
@click.option("--worker-timeout", type=Seconds(), default=60,
              show_default=True,
              help="Seconds without a heartbeat before the chief re-issues a worker's trial.")
@click.option("--chief-timeout", type=Seconds(), default=600,
              show_default=True,
              help="Seconds a worker waits for the chief to answer before it gives up.")
@click.option("--oracle-token-file", envvar="MNIST_SWEEPS_ORACLE_TOKEN_FILE",
              type=click.Path(dir_okay=False), metavar="PATH",
              help="A file holding the oracle's shared token (with --role; default: "
                   "$MNIST_SWEEPS_ORACLE_TOKEN).")
def sweep(spec, workers, role, oracle, worker_id, worker_timeout, chief_timeout,
          oracle_token_file, **options):
    """Run (or resume) the sweep SPEC: a name in sweeps/ or a YAML path."""
    from pipeline.search import roles

    id_source = "'--worker-id'"
    if not role and not oracle and not workers:
        # A scheduler may set Keras Tuner's own variables instead: the same checks.
        role, oracle, env_id = roles.from_environment() or (None, None, None)
        if env_id and not worker_id:
            worker_id, id_source = env_id, roles.ENV_ID
    if workers and role:
        raise click.UsageError("--workers starts its own chief and workers: drop --role")
    if role == "worker" and worker_id:
        roles.check_worker_id(worker_id, id_source)
    if role and not oracle:
        raise click.BadParameter("--role needs the chief's address", param_hint="'--oracle'")
    if oracle and not role:
        raise click.BadParameter("--oracle needs --role chief or worker",
                                 param_hint="'--role'")
    token = _oracle_token(role, oracle_token_file)
    _check_shared_store(role, oracle)
    spec_arg = spec
    spec = load_spec(spec, options["max_trials"], options["epochs"], options["seed"])
    dataset = load_data(options["data_path"], spec.training.validation_split,
                        options["train_limit"])
    check_tracking()
    if workers:
        from pipeline.search import local_cluster

        raise SystemExit(local_cluster.run(
            _sweep_args(spec_arg, options, worker_timeout, chief_timeout), workers,
            worker_timeout))
    from pipeline.search import distributed

    if role:
        distributed.set_role(role, oracle, worker_id or
                             f"worker-{socket.gethostname()}-{os.getpid()}", chief_timeout,
                             token, id_source)
    _run_sweeps([spec], lambda s: dataset, options, worker_timeout=worker_timeout)


def _check_shared_store(role, oracle):
    """Refuses --role across machines with a store only one machine can open (SQLite,
    files): a chief and workers on one machine (a loopback oracle) may share it."""
    if not role:
        return
    import ipaddress

    import mlflow

    uri = mlflow.get_tracking_uri()
    host = oracle.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and uri.split(":", 1)[0] in ("sqlite", "file", uri):
        error = InputError(f"--role {role} with a store local to this machine "
                           f"({uri.split(':', 1)[0]}): a sweep on several machines needs a "
                           "shared `mlflow server` (MLFLOW_TRACKING_URI=http://...)")
        error.param = "MLFLOW_TRACKING_URI"
        raise error


def _oracle_token(role, token_file):
    """The chief's and workers' shared token (and TLS files), checked before anything
    else (with --role)."""
    if not role:
        return None
    from pipeline.search import auth

    token = auth.require(auth.load_token(token_file), role)
    auth.check_tls(role)
    return token


def _sweep_args(spec_arg, options, worker_timeout, chief_timeout):
    """The `sweep` arguments that reproduce these options in another process."""
    args = [spec_arg, "--max-trials", options["max_trials"], "--epochs", options["epochs"],
            "--seed", options["seed"], "--data", options["data_path"], "--train-limit",
            options["train_limit"], "--experiment", options["experiment"], "--directory",
            options["directory"], "--worker-timeout", worker_timeout, "--chief-timeout",
            chief_timeout]
    args += ["--overwrite"] * options["overwrite"] + ["-v"] * options["verbose"]
    args += ["--no-register"] * options["no_register"]
    args += ["--mixed-precision"] * options["mixed_precision"]
    args += ["--pack", options["pack"]]
    return [str(a) for a in args]


def _run_sweeps(specs, load_dataset, options, **kwargs):
    """Configures the devices and runs the sweeps (one: `sweep`; all: `exercise`).

    A sweep that stops early exits 1 with one line saying why; SIGTERM exits 143
    after the current trial's run is closed (the same command resumes).
    """
    from pipeline import space
    from pipeline import sweep as sweep_module
    from pipeline.training import device, model

    wide = any(model.compute_bound(space.ConstrainedSpace(spec)) for spec in specs)
    devices = device.configure(options["mixed_precision"], options["threads"], wide)
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)  # Set by `mlflow run`.
    settings = sweep_module.Settings(
        experiment=options["experiment"], directory=options["directory"],
        overwrite=options["overwrite"], verbose=options["verbose"], devices=devices,
        pack=options["pack"], register=not options["no_register"], **kwargs)
    if len(specs) == 1:
        return [sweep_module.run(specs[0], load_dataset(specs[0]), settings,
                                 launcher_run_id=launcher)]
    return sweep_module.run_exercise(specs, load_dataset, settings, launcher_run_id=launcher)


@cli.command()
@sweep_options
@click.option("--out", default="reports", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the report files.")
def exercise(out, **options):
    """Run every exercise sweep in turn (Parts One to Three and `activation`), then
    the report."""
    specs = [load_spec(name, options["max_trials"], options["epochs"], options["seed"])
             for name in EXERCISE]
    check_tracking()
    datasets = {}
    for spec in specs:  # Check every input before the first trial.
        split = spec.training.validation_split
        if split not in datasets:
            datasets[split] = load_data(options["data_path"], split, options["train_limit"])
    _run_sweeps(specs, lambda spec: datasets[spec.training.validation_split], options)
    from pipeline import report as report_module

    out_dir, run_id, _ = report_module.write(options["experiment"], out)
    click.echo(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.html'}; "
               f"logged to MLflow run {run_id}")


@cli.command()
@click.option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME", default=names.DEFAULT_EXPERIMENT,
              show_default=True, callback=experiment_name,
              help="MLflow experiment holding the exercise sweeps.")
@click.option("--out", default="reports", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the report files.")
def report(experiment, out):
    """Answer the exercise from the runs in MLflow: report.md, report.html, plots."""
    from pipeline import report as report_module

    check_tracking()
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    out_dir, run_id, answers = report_module.write(experiment, out, launcher)
    for name in answers["missing"]:
        click.echo(f"missing sweep {name}: run {report_module.missing_command(name, experiment)}")
    click.echo(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.html'}; "
               f"logged to MLflow run {run_id}")


@cli.command()
@click.option("--spec", "spec_name", default=None, metavar="NAME",
              help="Open this spec's newest sweep (default: the newest sweep).")
@click.option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME", default=names.DEFAULT_EXPERIMENT,
              show_default=True, callback=experiment_name, help="MLflow experiment to open.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the UI, on 127.0.0.1.")
def ui(spec_name, experiment, port):
    """Start MLflow's UI on this store and print the link of the newest sweep's
    trials (Ctrl-C stops it)."""
    from pipeline.tracking import ui as ui_module

    check_tracking()
    ui_module.open_sweep(experiment, spec_name, port, click.echo)


def main():
    cli(prog_name="python -m pipeline")
