"""deploy/: the scheduler entrypoint, the Slurm batch script, the Kubernetes manifests.

No Slurm, Kubernetes or training here: static checks, and dry runs in a controlled
environment whose printed `python -m pipeline sweep` commands are parsed by the real
CLI, so that the scripts and the CLI's options cannot drift apart.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli.commands import sweep as sweep_command
from pipeline.errors import InputError, Interrupted, PipelineError
from pipeline.search import auth

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "deploy" / "task.sh"
SBATCH = REPO / "deploy" / "slurm" / "sweep.sbatch"
MANIFESTS = REPO / "deploy" / "k8s" / "sweep-job.yaml"
K8S_README = REPO / "deploy" / "k8s" / "README.md"
BASH = shutil.which("bash")
# A tracking URI with credentials and the oracle's token: no script may ever print them.
SECRET = "s3cret-pw"
TRACKING_URI = f"http://sweeper:{SECRET}@mlflow.internal:5000"
TOKEN = "0racle-t0ken-Qm7vXk2"
# What a dry run says about each task's token instead of the token itself.
TOKEN_LINE = re.compile(r"(chief|worker)'s oracle token: MNIST_SWEEPS_ORACLE_TOKEN "
                        r"\((\d+) characters(?:, sha256 ([0-9a-f]{8}))?\)")


def run(script, env, *args, path="", token=TOKEN):
    """Runs a deploy script with DRY_RUN=1 and only `env` (plus the secret URI and,
    unless `token` is None, the oracle token)."""
    env = {"PATH": path, "DRY_RUN": "1", "MLFLOW_TRACKING_URI": TRACKING_URI,
           **({} if token is None else {"MNIST_SWEEPS_ORACLE_TOKEN": token}), **env}
    result = subprocess.run([BASH, str(script), *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    for secret in (SECRET, TOKEN, token or TOKEN):
        assert secret not in result.stdout + result.stderr
    return result


def fingerprint(token):
    return len(token), hashlib.sha256(token.encode()).hexdigest()[:8]


def token_lines(result):
    """(role, length, sha256 prefix) of each task's token, as the dry run reports it."""
    return [(m[1], int(m[2]), m[3]) for m in TOKEN_LINE.finditer(result.stderr)]


def dry_run(env, *args, path=""):
    """The `sweep` parameters of the command task.sh prints, as the CLI parses them.

    The default PATH is empty: no scontrol (nor anything else) to lean on.
    """
    result = run(TASK, env, *args, path=path)
    assert result.returncode == 0, result.stderr
    return parse(result.stdout)


def parse(line):
    argv = shlex.split(line)
    assert argv[:4] == ["python", "-m", "pipeline", "sweep"]
    return sweep_command.make_context("sweep", argv[4:]).params


# --- task.sh ---------------------------------------------------------------------

def test_shell_scripts_parse():
    for script in (TASK, SBATCH):
        assert subprocess.run([BASH, "-n", str(script)]).returncode == 0, script


def test_task_is_executable():
    # Kubernetes' command and srun run it directly.
    assert os.access(TASK, os.X_OK)


def test_slurm_task_0_is_the_chief():
    params = dry_run({"SWEEP_SPEC": "part2-wide", "SWEEP_PORT": "8123",
                      "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "gpu[07-09]"},
                     "--max-trials", "3")
    assert (params["spec"], params["role"]) == ("part2-wide", "chief")
    # Listens where workers find it (below), not on every interface.
    assert params["oracle"] == "gpu07:8123"
    assert params["max_trials"] == 3


def test_slurm_worker_finds_the_chief_without_scontrol():
    params = dry_run({"SWEEP_SPEC": "part2-wide", "SWEEP_PORT": "8123",
                      "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu01"},
                     "--epochs", "2")
    assert params["role"] == "worker"
    assert params["oracle"] == "gpu07:8123"
    assert params["worker_id"] == "worker-2"
    assert params["epochs"] == 2


@pytest.mark.parametrize("nodes, first", [
    ("node7", "node7"), ("a1,b[1-2]", "a1"), ("rack[1-2]-n[01-04]", "rack1-n01")])
def test_slurm_node_list_fallback(nodes, first):
    params = dry_run({"SWEEP_SPEC": "part1-wide", "SLURM_PROCID": "1",
                      "SLURM_JOB_NODELIST": nodes})
    assert params["oracle"] == f"{first}:8000"


def test_slurm_worker_asks_scontrol_when_there_is_one(tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\nprintf 'gpu-a07\\ngpu-a08\\n'\n")
    scontrol.chmod(0o755)
    params = dry_run({"SWEEP_SPEC": "part1-wide", "SLURM_PROCID": "1",
                      "SLURM_JOB_NODELIST": "gpu-a[07-08]"}, path=str(tmp_path))
    assert params["oracle"] == "gpu-a07:8000"


def test_slurm_chief_listens_on_the_host_workers_use():
    env = {"SWEEP_SPEC": "part3", "SWEEP_PORT": "8123", "SLURM_JOB_NODELIST": "gpu[07-09]"}
    chief = dry_run({**env, "SLURM_PROCID": "0"})["oracle"]
    worker = dry_run({**env, "SLURM_PROCID": "3"})["oracle"]
    assert chief == worker == "gpu07:8123"
    # The batch script sets SWEEP_CHIEF_HOST: the chief listens on that host too.
    env["SWEEP_CHIEF_HOST"] = "cpu-n12"
    assert dry_run({**env, "SLURM_PROCID": "0"})["oracle"] == "cpu-n12:8123"


def test_chief_warns_when_its_host_name_is_loopback(tmp_path):
    getent = tmp_path / "getent"  # Debian's /etc/hosts: its own name is 127.0.1.1.
    getent.write_text("#!/bin/sh\necho '127.0.1.1       node7'\n")
    getent.chmod(0o755)
    result = run(TASK, {"SWEEP_SPEC": "part3", "SLURM_PROCID": "0",
                        "SLURM_JOB_NODELIST": "node7"}, path=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["oracle"] == "node7:8000"
    assert "loopback" in result.stderr and "SWEEP_BIND_HOST" in result.stderr


def test_kubernetes_index_0_is_the_chief_on_its_pod_ip():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0",
                      "SWEEP_BIND_HOST": "10.42.0.7"})
    assert (params["role"], params["oracle"]) == ("chief", "10.42.0.7:8000")


def test_an_ipv6_bind_host_gets_brackets():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0",
                      "SWEEP_BIND_HOST": "fd00:10:42::7"})
    assert params["oracle"] == "[fd00:10:42::7]:8000"


def test_every_interface_only_when_asked_for():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0",
                      "SWEEP_BIND_HOST": "0.0.0.0"})
    assert params["oracle"] == "0.0.0.0:8000"


def test_kubernetes_worker_id_is_its_index():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "1",
                      "SWEEP_CHIEF_HOST": "mnist-sweep-0.mnist-sweep"})
    assert params["role"] == "worker"
    assert params["oracle"] == "mnist-sweep-0.mnist-sweep:8000"
    assert params["worker_id"] == "worker-1"


def test_explicit_role_and_hosts_win():
    env = {"SWEEP_SPEC": "part3", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n[1-2]",
           "SWEEP_ROLE": "worker", "SWEEP_CHIEF_HOST": "chief.example"}
    params = dry_run(env)
    assert (params["oracle"], params["worker_id"]) == ("chief.example:8000", "worker-0")
    params = dry_run({**env, "SWEEP_ROLE": "chief", "SWEEP_BIND_HOST": "10.0.0.5"})
    assert params["oracle"] == "10.0.0.5:8000"


def test_pass_through_arguments_keep_their_quoting():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "1",
                      "SWEEP_CHIEF_HOST": "mnist-sweep-0.mnist-sweep"},
                     "--experiment", "nightly sweeps", "--mixed-precision")
    assert params["experiment"] == "nightly sweeps"
    assert params["mixed_precision"] is True


@pytest.mark.parametrize("env, message", [
    ({"JOB_COMPLETION_INDEX": "0"}, "SWEEP_SPEC"),
    # A chief with nowhere to listen: no pod IP under Kubernetes, no host otherwise.
    ({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0"}, "SWEEP_BIND_HOST"),
    ({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0",
      "SWEEP_CHIEF_HOST": "mnist-sweep-0.mnist-sweep"}, "SWEEP_BIND_HOST"),
    ({"SWEEP_SPEC": "part3", "SWEEP_ROLE": "chief", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
      "SWEEP_CHIEF_HOST": "mnist-sweep-0.mnist-sweep"}, "SWEEP_BIND_HOST"),
    ({"SWEEP_SPEC": "part3", "SWEEP_ROLE": "chief"}, "SWEEP_BIND_HOST"),
    ({"SWEEP_SPEC": "part3"}, "SWEEP_ROLE"),
    ({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "1"}, "SWEEP_CHIEF_HOST"),
    ({"SWEEP_SPEC": "part3", "SWEEP_ROLE": "worker", "SWEEP_CHIEF_HOST": "h"},
     "SWEEP_WORKER_ID"),
    ({"SWEEP_SPEC": "part3", "SWEEP_ROLE": "boss"}, "SWEEP_ROLE"),
    ({"SWEEP_SPEC": "part3", "SWEEP_ROLE": "chief", "SWEEP_PORT": "80a"}, "SWEEP_PORT"),
])
def test_task_stops_on_missing_or_bad_settings(env, message):
    result = run(TASK, env)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


# --- the oracle's token ------------------------------------------------------------

CHIEF = {"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0", "SWEEP_BIND_HOST": "10.42.0.7"}
WORKER = {"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "2",
          "SWEEP_CHIEF_HOST": "mnist-sweep-0.mnist-sweep"}


@pytest.mark.parametrize("env", [CHIEF, WORKER], ids=["chief", "worker"])
@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_task_refuses_to_start_without_a_token(env, token):
    result = run(TASK, {**env, **({} if token is None else
                                  {"MNIST_SWEEPS_ORACLE_TOKEN": token})}, token=None)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "MNIST_SWEEPS_ORACLE_TOKEN" in line and "MNIST_SWEEPS_ORACLE_TOKEN_FILE" in line
    assert result.stdout == ""


@pytest.mark.parametrize("env", [CHIEF, WORKER], ids=["chief", "worker"])
def test_token_is_in_the_environment_only_never_printed(env):
    result = run(TASK, env, "--epochs", "1", path="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)  # run() checked that TOKEN is in no output.
    assert not any("token" in arg.lower() for arg in argv)
    params = parse(result.stdout)
    assert TOKEN not in repr(params)
    # The dry run says where the token comes from, and shows a fingerprint only.
    ((role, length, digest),) = token_lines(result)
    assert role == params["role"]
    assert (length, digest) == fingerprint(TOKEN)


def test_token_file_is_enough_and_stays_unread_here(tmp_path):
    token_file = tmp_path / "oracle-token"
    token_file.write_text(TOKEN + "\n")
    env = {**CHIEF, "MNIST_SWEEPS_ORACLE_TOKEN_FILE": str(token_file)}
    result = run(TASK, env, token=None)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["role"] == "chief"
    assert f"file {token_file}" in result.stderr
    token_file.unlink()
    result = run(TASK, env, token=None)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "MNIST_SWEEPS_ORACLE_TOKEN_FILE" in line


def test_token_file_option_passes_through():
    result = run(TASK, WORKER, "--oracle-token-file", "/run/secrets/oracle-token",
                 token=None)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[-2:] == ["--oracle-token-file", "/run/secrets/oracle-token"]


# --- Slurm -----------------------------------------------------------------------

def sbatch_components():
    """The #SBATCH options of each heterogeneous job component, a set for each."""
    components = [set()]
    for line in SBATCH.read_text().splitlines():
        if line.startswith("#SBATCH hetjob"):
            components.append(set())
        elif line.startswith("#SBATCH "):
            components[-1].update(line.split()[1:])
        elif line and not line.startswith("#"):
            break  # sbatch reads no directive after the first command.
    return components


def test_sbatch_asks_for_a_cpu_chief_and_gpu_workers():
    chief, workers = sbatch_components()
    assert {"--ntasks=1", "--requeue"} <= chief
    assert not any("gpu" in option for option in chief)
    assert "--gpus-per-task=1" in workers
    assert any(re.fullmatch(r"--ntasks=\d+", option) for option in workers)


def test_sbatch_dry_run_prints_every_task():
    _, workers = sbatch_components()
    count = next(int(o.split("=")[1]) for o in workers if o.startswith("--ntasks="))
    result = run(SBATCH, {"SWEEP_SPEC": "part2-wide"}, "--max-trials", "20",
                 path="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    tasks = [parse(line) for line in result.stdout.splitlines()]
    assert len(tasks) == 1 + count
    assert [t["role"] for t in tasks] == ["chief"] + ["worker"] * count
    assert [t["worker_id"] for t in tasks[1:]] == [f"worker-{i}" for i in range(count)]
    (worker_oracle,) = {t["oracle"] for t in tasks[1:]}  # One chief for all.
    # The chief listens where the workers look for it: its own host, not 0.0.0.0.
    assert tasks[0]["oracle"] == worker_oracle
    assert not worker_oracle.startswith("0.0.0.0:")
    assert all(t["spec"] == "part2-wide" and t["max_trials"] == 20 for t in tasks)
    # The submitter's token is kept, and every task has it.
    assert {line[1:] for line in token_lines(result)} == {fingerprint(TOKEN)}
    assert len(token_lines(result)) == 1 + count


def sbatch_tokens(env=None):
    """The fingerprint of the token each task of a dry-run job gets, all one."""
    result = run(SBATCH, {"SWEEP_SPEC": "part3", **(env or {})}, path="/usr/bin:/bin",
                 token=None)
    assert result.returncode == 0, result.stderr
    lines = token_lines(result)
    assert [role for role, _, _ in lines][:2] == ["chief", "worker"]
    (one,) = {line[1:] for line in lines}  # The same token for the chief and workers.
    return one, result


def test_sbatch_makes_a_fresh_token_for_each_job():
    env = {"SWEEP_PYTHON": sys.executable}  # secrets.token_urlsafe(32): 43 characters.
    first, _ = sbatch_tokens(env)
    second, _ = sbatch_tokens(env)
    assert first[0] == second[0] == 43
    assert first != second


@pytest.mark.skipif(not shutil.which("openssl"), reason="no openssl here")
def test_sbatch_token_without_python_comes_from_openssl():
    (length, _), _ = sbatch_tokens({"SWEEP_PYTHON": "/nonexistent/python"})
    assert length == 64  # openssl rand -hex 32


def test_sbatch_never_prints_the_token_it_makes(tmp_path):
    made = "made-by-the-job-Hx81"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\n[ \"$1\" = -c ] && echo {made}\n")
    python.chmod(0o755)
    token, result = sbatch_tokens({"SWEEP_PYTHON": str(python)})
    assert token == fingerprint(made)
    assert made not in result.stdout + result.stderr


SRUN = """#!/bin/bash
# srun stand-in: runs the step's tasks here, two for the workers' component.
tasks=1
[[ -z ${STEPS:-} ]] || echo "$*" >> "$STEPS"
while [[ $1 == --* ]]; do
  [[ $1 == --het-group=1 ]] && tasks=2
  [[ $1 == --export=ALL,* ]] && export "${1#--export=ALL,}"
  shift
done
(( tasks == 1 )) && SLURM_PROCID=0 exec "$@"
for ((i = 0; i < tasks; i++)); do SLURM_PROCID=$i "$@" & done
wait
"""
# python stand-in: the chief exits with (or, with "hang", sleeps instead of) $CHIEF.
# Token generation (-c) goes to the real python; every task records the fingerprint
# of the token it got, and fails (97) without one or with it on its command line.
PYTHON = """#!/bin/bash
[[ $1 == -c ]] && exec "$REAL_PYTHON" "$@"
token=${MNIST_SWEEPS_ORACLE_TOKEN:-}
[[ -n $token && " $* " != *"$token"* ]] || exit 97
printf '%s' "$token" | sha256sum >> "$TOKENS"
if [[ " $* " == *" --role chief "* ]]; then
  [[ $CHIEF == hang ]] && exec sleep 60
  exit "$CHIEF"
fi
exit "$WORKERS"
"""


def run_sbatch(tmp_path, chief, workers, **more_env):
    """Runs sweep.sbatch for real with srun and python stand-ins; returns its status."""
    for name, text in (("srun", SRUN), ("python", PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_ID": "7",
           "SLURM_SUBMIT_DIR": str(REPO), "SWEEP_SPEC": "part3",
           "SWEEP_GRACE_SECONDS": "1", "SWEEP_PYTHON": str(tmp_path / "python"),
           "REAL_PYTHON": sys.executable, "TOKENS": str(tmp_path / "tokens"),
           "CHIEF": chief, "WORKERS": workers, "MLFLOW_TRACKING_URI": TRACKING_URI,
           **more_env}
    result = subprocess.run([BASH, str(SBATCH)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert SECRET not in result.stdout + result.stderr
    return result.returncode


def test_sbatch_tasks_get_the_jobs_token_through_the_environment(tmp_path):
    assert run_sbatch(tmp_path, "0", "0") == 0  # No task exited 97.
    tokens = (tmp_path / "tokens").read_text().splitlines()
    assert len(tokens) == 3  # The chief and the stand-in srun's two workers.
    assert len(set(tokens)) == 1


@pytest.mark.parametrize("chief, workers, status", [("0", "1", 0), ("3", "0", 3)])
def test_sbatch_exits_with_the_chiefs_status(tmp_path, chief, workers, status):
    assert run_sbatch(tmp_path, chief, workers) == status


def test_sbatch_stops_a_chief_whose_workers_are_gone(tmp_path):
    assert run_sbatch(tmp_path, "hang", "1") == 128 + 15  # SIGTERM after the grace


def sbatch_steps(tmp_path, **env):
    """The options of each srun step the batch script starts, by het group."""
    steps = tmp_path / "steps"
    assert run_sbatch(tmp_path, "0", "0", STEPS=str(steps), **env) == 0
    options = [line.split(" deploy/task.sh")[0].split() for line in
               steps.read_text().splitlines()]
    return {next(o for o in step if o.startswith("--het-group=")): step for step in options}


def test_every_srun_step_asks_for_its_components_cpus(tmp_path):
    # Since Slurm 22.05 srun does not take --cpus-per-task from the job: each step
    # passes its own component's, as Slurm gives it to the batch script...
    steps = sbatch_steps(tmp_path, SLURM_CPUS_PER_TASK="3",
                         SLURM_CPUS_PER_TASK_HET_GROUP_0="3",
                         SLURM_CPUS_PER_TASK_HET_GROUP_1="5")
    assert sorted(steps) == ["--het-group=0", "--het-group=1"]
    assert "--cpus-per-task=3" in steps["--het-group=0"]
    assert "--cpus-per-task=5" in steps["--het-group=1"]
    # ...and, without those variables, the #SBATCH directives' values.
    steps = sbatch_steps(tmp_path)
    for step, component in zip(("--het-group=0", "--het-group=1"), sbatch_components(),
                               strict=True):
        (cpus,) = [o for o in component if o.startswith("--cpus-per-task=")]
        assert cpus in steps[step]


@pytest.mark.parametrize("job_id", [0, 1, 11999, 12000, 12767, 19999, 31999, 987654321])
def test_sbatch_port_stays_below_the_ephemeral_range(job_id):
    # Linux hands out 32768-60999 to outgoing connections: a chief's port there may
    # already be taken on its node.
    result = run(SBATCH, {"SWEEP_SPEC": "part3", "SLURM_JOB_ID": str(job_id)},
                 path="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    (port,) = {parse(line)["oracle"].rpartition(":")[2]
               for line in result.stdout.splitlines()}
    assert 1024 <= int(port) < 32768


def test_sbatch_ports_differ_between_neighbouring_jobs():
    ports = set()
    for job_id in (4000, 4001, 4002):
        result = run(SBATCH, {"SWEEP_SPEC": "part3", "SLURM_JOB_ID": str(job_id)},
                     path="/usr/bin:/bin")
        ports.add(parse(result.stdout.splitlines()[0])["oracle"])
    assert len(ports) == 3


# --- Kubernetes ------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests():
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    return {d["kind"]: d for d in documents}


def container(job_spec):
    (only,) = job_spec["template"]["spec"]["containers"]
    return only


def env_of(job_spec):
    return {e["name"]: e for e in container(job_spec)["env"]}


def pod_spec(job_spec):
    return job_spec["template"]["spec"]


def index_set(indexes):
    """ "0,2-4" -> {0, 2, 3, 4}, as a Job's succeededIndexes reads."""
    result = set()
    for part in indexes.split(","):
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


def ends_before_every_index_succeeded(job_spec):
    """Whether a success policy rule can end the Job while some pods still run."""
    every = set(range(job_spec["completions"]))
    for rule in job_spec.get("successPolicy", {}).get("rules", []):
        indexes = index_set(rule["succeededIndexes"]) if "succeededIndexes" in rule else every
        if indexes != every or rule.get("succeededCount", len(every)) < len(every):
            return True
    return False


def test_every_manifest_names_its_api_and_kind():
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    for document in documents:
        assert document["apiVersion"] and document["kind"]
        assert document["metadata"]["name"]
    assert sorted(d["kind"] for d in documents) == sorted(
        ["PersistentVolumeClaim", "Service", "NetworkPolicy", "Job", "CronJob"])


def test_no_secret_is_defined_in_the_manifest():
    # Credentials live in a Secret created with kubectl (deploy/k8s/README.md).
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    assert not [d for d in documents if d["kind"] == "Secret"]
    assert not [d for d in documents if "data" in d or "stringData" in d]


def test_job_is_indexed_with_a_chief_and_workers(manifests):
    spec = manifests["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    # Never: a failed container fails its pod, for podFailurePolicy to judge.
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert container(spec)["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("policy, early", [
    (None, False), ({"rules": [{"succeededIndexes": "0-4"}]}, False),
    ({"rules": [{"succeededIndexes": "0"}]}, True), ({"rules": [{"succeededCount": 1}]}, True),
    ({"rules": [{"succeededIndexes": "0,2-4"}]}, True)])
def test_early_success_check(policy, early):
    spec = {"completions": 5, **({"successPolicy": policy} if policy else {})}
    assert ends_before_every_index_succeeded(spec) is early


def test_job_waits_for_every_pod_and_lets_it_finish(manifests):
    spec = manifests["Job"]["spec"]
    # Done when every index is: a worker still logging its last trial is not stopped
    # because the chief (index 0) has succeeded.
    assert not ends_before_every_index_succeeded(spec)
    # The sweep finishes within 30 s of SIGTERM.
    assert pod_spec(spec)["terminationGracePeriodSeconds"] >= 45


def failure_action(job_spec, exit_code, disrupted=False):
    """What the Job does with a pod whose container exited `exit_code`, as Kubernetes
    reads podFailurePolicy: the first rule that matches; none: Count (backoffLimit)."""
    names = {c["name"] for c in job_spec["template"]["spec"]["containers"]}
    for rule in job_spec.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes and codes.get("containerName") in (None, *names):
            if (exit_code in codes["values"]) == (codes["operator"] == "In"):
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if (disrupted and pattern["type"] == "DisruptionTarget"
                    and pattern.get("status", "True") == "True"):
                return rule["action"]
    return "Count"


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_pod_failure_policy_is_one_kubernetes_accepts(manifests, kind):
    spec = manifests["Job"]["spec"] if kind == "Job" else (
        manifests["CronJob"]["spec"]["jobTemplate"]["spec"])
    rules = spec["podFailurePolicy"]["rules"]
    assert pod_spec(spec)["restartPolicy"] == "Never"  # The API requires it.
    names = {c["name"] for c in pod_spec(spec)["containers"]}
    for rule in rules:
        assert rule["action"] in {"FailJob", "Ignore", "Count"}
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule)
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["containerName"] in names
            assert codes["operator"] in {"In", "NotIn"}
            values = codes["values"]
            assert values == sorted(set(values)) and 0 not in values


@pytest.mark.parametrize("exit_code, disrupted, action", [
    (PipelineError.exit_code, False, "FailJob"),  # 1: the sweep cannot go on
    (InputError.exit_code, False, "FailJob"),  # 2: bad spec or option
    (Interrupted.exit_code, True, "Ignore"),  # 143: pre-empted, evicted
    (137, True, "Ignore"),  # SIGKILL after the grace period of a disruption
    (1, True, "Ignore"),  # a disrupted pod is retried whatever its status
    (137, False, "Count"),  # OOM-killed: retried, up to backoffLimit
    (Interrupted.exit_code, False, "Count"),
    (139, False, "Count")])
def test_pod_failure_policy_by_exit_status(manifests, exit_code, disrupted, action):
    spec = manifests["Job"]["spec"]
    assert failure_action(spec, exit_code, disrupted) == action


def test_backoff_limit_is_for_the_failures_a_retry_may_cure(manifests):
    # Exits 1 and 2 end the Job at once, disruptions are not counted: what is left
    # (OOM kills, crashes) needs few tries.
    assert 1 <= manifests["Job"]["spec"]["backoffLimit"] <= 10


def test_job_runs_task_sh(manifests):
    command = container(manifests["Job"]["spec"])["command"]
    assert command[-1].endswith("deploy/task.sh")


def documented_secret():
    """The name and keys of the Secret that deploy/k8s/README.md's kubectl command makes."""
    text = K8S_README.read_text()
    (name,) = re.findall(r"kubectl create secret generic (\S+)", text)
    return name, set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", text))


@pytest.mark.parametrize("variable", ["MNIST_SWEEPS_ORACLE_TOKEN", "MLFLOW_TRACKING_URI"])
def test_credentials_come_from_the_documented_secret(manifests, variable):
    name, keys = documented_secret()
    entry = env_of(manifests["Job"]["spec"])[variable]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert "value" not in entry
    assert ref["name"] == name
    assert ref["key"] in keys


def test_documented_token_is_random():
    assert "secrets.token_urlsafe(32)" in K8S_README.read_text()


def test_documented_commands_keep_secrets_off_command_lines():
    # A command's arguments are readable by every user of the machine (ps).
    assert "--from-literal" not in K8S_README.read_text()
    for line in SBATCH.read_text().splitlines():
        if re.match(r"#\s+sbatch ", line):
            assert "MLFLOW_TRACKING_URI=" not in line and "TOKEN=" not in line


DOCS = (K8S_README, MANIFESTS, SBATCH, TASK)


@pytest.mark.parametrize("claim", [
    "offers no TLS", "no TLS option", "ends Failed", "for an hour",
    "restarts in its own pod", "retried until backoffLimit"])
def test_docs_make_no_stale_claim(claim):
    for doc in DOCS:
        text = " ".join(doc.read_text().replace("#", " ").split())
        assert claim.lower() not in text.lower(), (doc.name, claim)


def test_readme_says_what_the_code_does():
    text = " ".join(K8S_README.read_text().split())
    # Optional TLS, by the variables the code reads.
    for variable in (auth.ENV_TOKEN, auth.ENV_TLS_CERT, auth.ENV_TLS_KEY, auth.ENV_TLS_CA):
        assert variable in text, variable
    # The timeouts, with the CLI's defaults.
    defaults = {p.opts[0]: p.default for p in sweep_command.params if p.opts}
    for option in ("--chief-timeout", "--worker-timeout"):
        found = re.findall(re.escape(option) + r"`? \((\d+) s\)", text)
        assert found and {int(s) for s in found} == {int(defaults[option])}, option


def test_docs_and_policy_agree_on_the_exit_codes(manifests):
    spec = manifests["Job"]["spec"]
    (fail,) = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(fail["onExitCodes"]["values"]) == {PipelineError.exit_code,
                                                  InputError.exit_code}
    text = " ".join(K8S_README.read_text().split())
    for code in fail["onExitCodes"]["values"]:
        assert re.search(rf"exits {code}: [^|]+\| fails at once", text), code
    assert f"`backoffLimit` ({spec['backoffLimit']})" in text


def test_pods_run_unprivileged_on_a_read_only_root(manifests):
    spec = manifests["Job"]["spec"]
    pod = pod_spec(spec)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    box = container(spec)["securityContext"]
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"]["drop"] == ["ALL"]
    assert box.get("privileged", False) is False
    assert box["readOnlyRootFilesystem"] is True
    # Where the sweep writes is a volume: its state (the claim) and /tmp (an emptyDir),
    # with TMPDIR and HOME (Keras', matplotlib's, CUDA's caches) there.
    volumes = {v["name"]: v for v in pod_spec(spec)["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in container(spec)["volumeMounts"]
                if not m.get("readOnly")}
    env = env_of(spec)
    assert "persistentVolumeClaim" in writable[env["MNIST_SWEEPS_DIR"]["value"]]
    for variable in ("TMPDIR", "HOME"):
        path = Path(env[variable]["value"])
        assert any(path == Path(mount) or Path(mount) in path.parents
                   for mount in writable), variable
    assert "emptyDir" in writable[env["TMPDIR"]["value"]]


def test_network_policy_admits_only_the_sweep_to_the_oracle(manifests):
    policy = manifests["NetworkPolicy"]["spec"]
    labels = manifests["Job"]["spec"]["template"]["metadata"]["labels"]
    port = int(env_of(manifests["Job"]["spec"])["SWEEP_PORT"]["value"])

    def sweep_pods(selector):
        return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()

    # Every pod of the sweep is selected, so no other ingress reaches any of them...
    assert sweep_pods(policy["podSelector"])
    assert "Ingress" in policy["policyTypes"]
    # ...but the oracle's port, from the sweep's own pods (this namespace) only.
    (rule,) = policy["ingress"]
    assert rule["from"]
    for peer in rule["from"]:
        assert set(peer) == {"podSelector"}  # No namespaceSelector, no ipBlock.
        assert sweep_pods(peer["podSelector"])
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    assert [p["port"] for p in manifests["Service"]["spec"]["ports"]] == [port]


def test_sweep_state_is_on_the_claim_and_data_is_mounted(manifests):
    spec = manifests["Job"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in container(spec)["volumeMounts"]}
    env = env_of(spec)
    claim = manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert claims[mounts[env["MNIST_SWEEPS_DIR"]["value"]]] == claim
    assert str(Path(env["MNIST_NPZ"]["value"]).parent) in mounts


def test_service_is_headless_and_names_the_pods(manifests):
    service = manifests["Service"]
    pod = manifests["Job"]["spec"]["template"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]


def test_cronjob_runs_the_same_job_one_at_a_time(manifests):
    cron = manifests["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert len(cron["schedule"].split()) == 5
    assert cron["jobTemplate"]["spec"] == manifests["Job"]["spec"]


POD_IP = "10.42.0.7"
SECRET_VALUES = {"tracking-uri": TRACKING_URI, "oracle-token": TOKEN}


def pod_env(job_spec, index):
    """The environment of pod `index`, resolved as Kubernetes does it."""
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for variable in container(job_spec)["env"]:
        source = variable.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[variable["name"]] = SECRET_VALUES[source["secretKeyRef"]["key"]]
        elif "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            assert "job-name" in field or field == "status.podIP"
            env[variable["name"]] = POD_IP if field == "status.podIP" else "mnist-sweep-29001234"
        else:  # $(NAME) expands only variables defined earlier in the list.
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]],
                                           variable["value"])
    return env


def test_kubernetes_pods_get_chief_and_worker_commands(manifests):
    spec = manifests["Job"]["spec"]
    args = container(spec).get("args", [])
    service = manifests["Service"]["metadata"]["name"]
    chief, worker = (dry_run(pod_env(spec, i), *args) for i in (0, 1))
    port = env_of(spec)["SWEEP_PORT"]["value"]
    # The chief listens on its pod's IP (the downward API), not on every interface.
    assert env_of(spec)["SWEEP_BIND_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert (chief["role"], chief["oracle"]) == ("chief", f"{POD_IP}:{port}")
    assert worker["oracle"] == f"mnist-sweep-29001234-0.{service}:{port}"
    assert worker["worker_id"] == "worker-1"
