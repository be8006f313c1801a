#!/usr/bin/env bash
# One task of a distributed sweep: the same entrypoint for every Slurm task and every
# Kubernetes pod. It works out this task's role and execs
#
#   python -m pipeline sweep SPEC --role chief  --oracle BIND:PORT                  "$@"
#   python -m pipeline sweep SPEC --role worker --oracle CHIEF:PORT --worker-id ID "$@"
#
# Environment:
#   SWEEP_SPEC         the sweep: a name in sweeps/ or a YAML path (required)
#   SWEEP_PORT         the chief's oracle port (default 8000)
#   SWEEP_ROLE         chief or worker; default: task index 0 is the chief
#   SWEEP_CHIEF_HOST   where workers find the chief; default under Slurm: the first
#                      host of SLURM_JOB_NODELIST (Kubernetes has no default)
#   SWEEP_BIND_HOST    the address the chief listens on (default 0.0.0.0: every interface)
#   SWEEP_WORKER_ID    a worker's id (default worker-<task index>)
#   SWEEP_PYTHON       the interpreter (default python)
#   DRY_RUN=1          print the command, shell-quoted on one line, instead of running it
# The task index is JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_PROCID.
# MLFLOW_TRACKING_URI, MNIST_NPZ and MNIST_SWEEPS_DIR pass through in the environment;
# the tracking URI may hold credentials, so nothing here ever prints it.
set -euo pipefail

die() {
  echo "deploy/task.sh: $*" >&2
  exit 2
}

# The first host of a Slurm node list without scontrol, e.g. "gpu[07-09,12],cpu01"
# -> "gpu07": each bracketed range contributes its first member.
first_host() {
  local rest=$1 host="" range
  local bracketed='^([^,[]*)\[([^]]*)\](.*)$'
  while [[ $rest =~ $bracketed ]]; do
    range=${BASH_REMATCH[2]}
    host+=${BASH_REMATCH[1]}${range%%[,-]*}
    rest=${BASH_REMATCH[3]}
  done
  echo "$host${rest%%,*}"
}

slurm_chief_host() {
  local nodes=${SLURM_JOB_NODELIST:-} host=""
  [[ -n $nodes ]] || return 0
  if command -v scontrol >/dev/null; then
    # `read` instead of `| head`: no SIGPIPE to trip pipefail on long node lists.
    read -r host < <(scontrol show hostnames "$nodes") || true
  fi
  echo "${host:-$(first_host "$nodes")}"
}

spec=${SWEEP_SPEC:-}
port=${SWEEP_PORT:-8000}
[[ -n $spec ]] || die "set SWEEP_SPEC to a sweep name or YAML path"
[[ $port =~ ^[0-9]+$ ]] || die "SWEEP_PORT must be a port number, got '$port'"

# Kubernetes sets JOB_COMPLETION_INDEX only in Indexed Jobs; Slurm sets SLURM_PROCID.
index=${JOB_COMPLETION_INDEX:-${SLURM_PROCID:-}}
role=${SWEEP_ROLE:-}
if [[ -z $role ]]; then
  [[ -n $index ]] || die "no JOB_COMPLETION_INDEX or SLURM_PROCID: set SWEEP_ROLE"
  if [[ $index == 0 ]]; then role=chief; else role=worker; fi
fi

cmd=("${SWEEP_PYTHON:-python}" -m pipeline sweep "$spec" --role "$role")
case $role in
  chief)
    # Listening on every interface spares the chief resolving its own name, which may
    # map to 127.0.1.1 (Debian /etc/hosts) or not yet exist (a pod's DNS record).
    cmd+=(--oracle "${SWEEP_BIND_HOST:-0.0.0.0}:$port")
    ;;
  worker)
    chief=${SWEEP_CHIEF_HOST:-$(slurm_chief_host)}
    [[ -n $chief ]] || die "set SWEEP_CHIEF_HOST to the chief's host name"
    # The id must survive restarts: the chief hands a worker that asks again under
    # the same id its unfinished trial back.
    worker_id=${SWEEP_WORKER_ID:-${index:+worker-$index}}
    [[ -n $worker_id ]] || die "no task index for a stable worker id: set SWEEP_WORKER_ID"
    cmd+=(--oracle "$chief:$port" --worker-id "$worker_id")
    ;;
  *)
    die "SWEEP_ROLE must be chief or worker, got '$role'"
    ;;
esac
cmd+=("$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q' "${cmd[0]}"
  printf ' %q' "${cmd[@]:1}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
