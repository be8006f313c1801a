"""deploy/: the scheduler entrypoint, the Slurm batch script, the Kubernetes manifests.

No Slurm, Kubernetes or training here: static checks, and dry runs in a controlled
environment whose printed `python -m pipeline sweep` commands are parsed by the real
CLI, so that the scripts and the CLI's options cannot drift apart.
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.cli import sweep as sweep_command

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "deploy" / "task.sh"
SBATCH = REPO / "deploy" / "slurm" / "sweep.sbatch"
MANIFESTS = REPO / "deploy" / "k8s" / "sweep-job.yaml"
BASH = shutil.which("bash")
# A tracking URI with credentials: no script may ever print it.
SECRET = "s3cret-pw"
TRACKING_URI = f"http://sweeper:{SECRET}@mlflow.internal:5000"


def run(script, env, *args, path=""):
    """Runs a deploy script with DRY_RUN=1 and only `env` (plus the secret URI)."""
    env = {"PATH": path, "DRY_RUN": "1", "MLFLOW_TRACKING_URI": TRACKING_URI, **env}
    result = subprocess.run([BASH, str(script), *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert SECRET not in result.stdout + result.stderr
    return result


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
    assert params["oracle"] == "0.0.0.0:8123"  # Listens on every interface.
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


def test_kubernetes_index_0_is_the_chief():
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0"})
    assert (params["role"], params["oracle"]) == ("chief", "0.0.0.0:8000")


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
    params = dry_run({"SWEEP_SPEC": "part3", "JOB_COMPLETION_INDEX": "0"},
                     "--experiment", "nightly sweeps", "--mixed-precision")
    assert params["experiment"] == "nightly sweeps"
    assert params["mixed_precision"] is True


@pytest.mark.parametrize("env, message", [
    ({"JOB_COMPLETION_INDEX": "0"}, "SWEEP_SPEC"),
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
    assert result.stdout == ""


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
    chief_port = tasks[0]["oracle"].rpartition(":")[2]
    (worker_oracle,) = {t["oracle"] for t in tasks[1:]}  # One chief for all.
    assert worker_oracle.endswith(f":{chief_port}")
    assert all(t["spec"] == "part2-wide" and t["max_trials"] == 20 for t in tasks)


SRUN = """#!/bin/bash
# srun stand-in: runs the step's tasks here, two for the workers' component.
tasks=1
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
PYTHON = """#!/bin/bash
if [[ " $* " == *" --role chief "* ]]; then
  [[ $CHIEF == hang ]] && exec sleep 60
  exit "$CHIEF"
fi
exit "$WORKERS"
"""


def run_sbatch(tmp_path, chief, workers):
    """Runs sweep.sbatch for real with srun and python stand-ins; returns its status."""
    for name, text in (("srun", SRUN), ("python", PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_ID": "7",
           "SLURM_SUBMIT_DIR": str(REPO), "SWEEP_SPEC": "part3",
           "SWEEP_GRACE_SECONDS": "1", "SWEEP_PYTHON": str(tmp_path / "python"),
           "CHIEF": chief, "WORKERS": workers, "MLFLOW_TRACKING_URI": TRACKING_URI}
    result = subprocess.run([BASH, str(SBATCH)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert SECRET not in result.stdout + result.stderr
    return result.returncode


@pytest.mark.parametrize("chief, workers, status", [("0", "1", 0), ("3", "0", 3)])
def test_sbatch_exits_with_the_chiefs_status(tmp_path, chief, workers, status):
    assert run_sbatch(tmp_path, chief, workers) == status


def test_sbatch_stops_a_chief_whose_workers_are_gone(tmp_path):
    assert run_sbatch(tmp_path, "hang", "1") == 128 + 15  # SIGTERM after the grace


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


def test_every_manifest_names_its_api_and_kind():
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    for document in documents:
        assert document["apiVersion"] and document["kind"]
        assert document["metadata"]["name"]
    assert sorted(d["kind"] for d in documents) == sorted(
        ["Secret", "PersistentVolumeClaim", "Service", "Job", "CronJob"])


def test_job_is_indexed_with_a_chief_and_workers(manifests):
    spec = manifests["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    # Done when the chief (index 0) is: workers left waiting are then stopped.
    assert spec["successPolicy"]["rules"] == [{"succeededIndexes": "0"}]
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert container(spec)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_job_runs_task_sh(manifests):
    command = container(manifests["Job"]["spec"])["command"]
    assert command[-1].endswith("deploy/task.sh")


def test_tracking_uri_comes_from_the_secret(manifests):
    variable = env_of(manifests["Job"]["spec"])["MLFLOW_TRACKING_URI"]
    ref = variable["valueFrom"]["secretKeyRef"]
    secret = manifests["Secret"]
    assert "value" not in variable
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_sweep_state_is_on_the_claim_and_data_is_mounted(manifests):
    spec = manifests["Job"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["template"]["spec"]["volumes"]}
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


def pod_env(job_spec, index):
    """The environment of pod `index`, resolved as Kubernetes does it."""
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for variable in container(job_spec)["env"]:
        source = variable.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[variable["name"]] = TRACKING_URI
        elif "fieldRef" in source:
            assert "job-name" in source["fieldRef"]["fieldPath"]
            env[variable["name"]] = "mnist-sweep-29001234"
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
    assert (chief["role"], chief["oracle"]) == ("chief", f"0.0.0.0:{port}")
    assert worker["oracle"] == f"mnist-sweep-29001234-0.{service}:{port}"
    assert worker["worker_id"] == "worker-1"
