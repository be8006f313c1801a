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
#   SWEEP_BIND_HOST    the address the chief listens on; default under Kubernetes: none
#                      (the manifest sets it to the pod's IP), else the chief's host as
#                      workers see it (SWEEP_CHIEF_HOST or its Slurm default). 0.0.0.0
#                      (every interface) only when set explicitly.
#   SWEEP_WORKER_ID    a worker's id (default worker-<task index>)
#   SWEEP_PYTHON       the interpreter (default python)
#   DRY_RUN=1          print the command, shell-quoted on one line, instead of running it
#   MNIST_SWEEPS_ORACLE_TOKEN, or MNIST_SWEEPS_ORACLE_TOKEN_FILE (a file holding it):
#                      the oracle's shared token, the same for the chief and every
#                      worker (required). It reaches python through the environment
#                      only: never an argument, never printed.
# The task index is JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_PROCID.
# MLFLOW_TRACKING_URI, MNIST_NPZ and MNIST_SWEEPS_DIR pass through in the environment;
# the tracking URI may hold credentials, so nothing here ever prints it. So do the
# optional oracle TLS files (PEM paths): MNIST_SWEEPS_ORACLE_TLS_CERT and _KEY, with
# which the chief serves TLS, and MNIST_SWEEPS_ORACLE_TLS_CA, with which workers verify it.
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

# gRPC wants an IPv6 address in brackets ("[fd00::5]:8000"), e.g. an IPv6 pod IP.
host_port() {
  if [[ $1 == *:* && $1 != \[* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi
}

# A host name that resolves to loopback here (Debian's /etc/hosts maps its own name to
# 127.0.1.1) would have the chief listen where no other node can reach it.
warn_if_loopback() {
  local address=""
  command -v getent >/dev/null || return 0
  read -r address _ < <(getent hosts "$1") || true
  if [[ $address == 127.* || $address == ::1 ]]; then
    echo "deploy/task.sh: warning: $1 is $address (loopback) here: workers on other" \
      "hosts cannot reach the chief; set SWEEP_BIND_HOST to this host's address" >&2
  fi
}

# The oracle token: the chief serves only calls that carry it, and a worker without
# it is refused, so stop here rather than after loading the data. Sets token_from to
# where it comes from; a pass-through --oracle-token-file PATH names a file as well.
check_token() {
  local arg file=${MNIST_SWEEPS_ORACLE_TOKEN_FILE:-}
  token_from=""
  if [[ -n $file ]]; then
    [[ -r $file && -s $file ]] ||
      die "MNIST_SWEEPS_ORACLE_TOKEN_FILE names no readable, non-empty file: '$file'"
    token_from="file $file"
  elif [[ -n ${MNIST_SWEEPS_ORACLE_TOKEN:-} ]]; then
    token_from="MNIST_SWEEPS_ORACLE_TOKEN ($(fingerprint))"
  else
    for arg; do
      if [[ $arg == --oracle-token-file || $arg == --oracle-token-file=* ]]; then
        token_from="the file --oracle-token-file names"
        return
      fi
    done
    die "no oracle token: set MNIST_SWEEPS_ORACLE_TOKEN or MNIST_SWEEPS_ORACLE_TOKEN_FILE," \
      "the same for the chief and every worker"
  fi
}

# What a dry run shows instead of the token: its length and the start of its SHA-256,
# enough to tell whether two tasks share a token, nothing to rebuild it from. printf
# is a builtin: the token goes down a pipe, never into a command line.
fingerprint() {
  local token=$MNIST_SWEEPS_ORACLE_TOKEN sum=""
  if command -v sha256sum >/dev/null; then
    read -r sum _ < <(printf '%s' "$token" | sha256sum)
  fi
  echo "${#token} characters${sum:+, sha256 ${sum:0:8}}"
}

spec=${SWEEP_SPEC:-}
port=${SWEEP_PORT:-8000}
[[ -n $spec ]] || die "set SWEEP_SPEC to a sweep name or YAML path"
[[ $port =~ ^[0-9]+$ ]] || die "SWEEP_PORT must be a port number, got '$port'"
check_token "$@"

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
    # Not every interface by default: only the address workers reach it at. A pod's
    # DNS record may not exist yet when it starts, hence its IP under Kubernetes.
    bind=${SWEEP_BIND_HOST:-}
    if [[ -z $bind && -z ${JOB_COMPLETION_INDEX:-}${KUBERNETES_SERVICE_HOST:-} ]]; then
      bind=${SWEEP_CHIEF_HOST:-$(slurm_chief_host)}
      [[ -z $bind ]] || warn_if_loopback "$bind"
    fi
    [[ -n $bind ]] || die "set SWEEP_BIND_HOST to the address the chief listens on" \
      "(Kubernetes: the pod's IP, fieldRef status.podIP; 0.0.0.0: every interface)"
    cmd+=(--oracle "$(host_port "$bind" "$port")")
    ;;
  worker)
    chief=${SWEEP_CHIEF_HOST:-$(slurm_chief_host)}
    [[ -n $chief ]] || die "set SWEEP_CHIEF_HOST to the chief's host name"
    # The id must survive restarts: the chief hands a worker that asks again under
    # the same id its unfinished trial back.
    worker_id=${SWEEP_WORKER_ID:-${index:+worker-$index}}
    [[ -n $worker_id ]] || die "no task index for a stable worker id: set SWEEP_WORKER_ID"
    cmd+=(--oracle "$(host_port "$chief" "$port")" --worker-id "$worker_id")
    ;;
  *)
    die "SWEEP_ROLE must be chief or worker, got '$role'"
    ;;
esac
cmd+=("$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  [[ -z $token_from ]] || echo "deploy/task.sh: $role's oracle token: $token_from" >&2
  printf '%q' "${cmd[0]}"
  printf ' %q' "${cmd[@]:1}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
