#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine: for the `slurm` tests and for trying `./run.sh slurm`.
#
#   scripts/local_slurm.sh start    install slurm-wlm and munge when missing (Debian/Ubuntu, apt-get, root),
#                                   write /etc/slurm/slurm.conf for this node, start munged, slurmctld and
#                                   slurmd, wait until `sinfo` shows the node idle
#   scripts/local_slurm.sh stop     stop the three daemons (by their pid files; jobs still running die with them)
#   scripts/local_slurm.sh status   which daemons run, and sinfo
#
# Every command is idempotent: `start` on a running cluster checks it and returns. The daemons run as root
# (slurmctld, slurmd) and as the munge user (munged), with process tracking by /proc
# (ProctrackType=proctrack/linuxproc) and no task plugin (TaskPlugin=task/none), because containers and
# small VMs often have no usable cgroup hierarchy; jobs are therefore not confined to their CPUs.
# A slurm.conf that this script did not write is never touched: the script stops with an error instead.
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log, /var/log/munge/munged.log.
set -euo pipefail

CONF=${LOCAL_SLURM_CONF:-/etc/slurm/slurm.conf}
MARK="# written by cxr-pipeline scripts/local_slurm.sh"
NODE=$(hostname -s)
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
WAIT_S=${LOCAL_SLURM_WAIT_S:-60}

say() { echo "[local_slurm] $*"; }
die() { echo "[local_slurm] error: $*" >&2; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and runs slurmctld/slurmd as root); run it with sudo."
}

alive() {  # alive PIDFILE: the process named in the pid file runs
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_if_missing() {
  local missing=()
  for cmd in sbatch sinfo squeue scontrol slurmctld slurmd munged; do
    command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing[*]} and no apt-get here: install SLURM (slurmctld, slurmd, client) and munge with this system's package manager."
  say "installing slurm-wlm and munge (missing: ${missing[*]})..."
  local log=/tmp/local_slurm_install.log
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "apt-get install slurm-wlm munge failed (full log: $log); a package registry must be reachable."
  fi
  say "installed: $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?') (log: $log)"
}

conf_text() {
  local cpus mem
  cpus=$(nproc)
  # 95% of the memory `free` reports: a node configured with more than slurmd measures is drained.
  mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')
  cat <<EOF
$MARK: a single-node cluster on $NODE.
# Rewritten on every start; delete the first line to keep your own edits (the script then refuses to touch it).
ClusterName=cxr-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Writes the config; sets CHANGED=1 when it differs from what was there.
CHANGED=""
write_conf() {
  mkdir -p "$(dirname "$CONF")"
  if [[ -f $CONF ]] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script (a real cluster's config?): not touching it. Move it away to use a local test cluster."
  fi
  local new
  new=$(conf_text)
  if [[ -f $CONF ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
    return 0
  fi
  printf '%s\n' "$new" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  say "wrote $CONF (node $NODE, $(nproc) CPUs)"
  CHANGED=1
}

start_munge() {
  if alive "$MUNGE_PID"; then return 0; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  local user=root
  id munge >/dev/null 2>&1 && user=munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
      PATH=$PATH:/usr/sbin mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    say "created /etc/munge/munge.key"
  fi
  chown -R "$user:" /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  if [[ $user == root ]]; then
    /usr/sbin/munged --force
  else
    runuser -u munge -- /usr/sbin/munged
  fi
  for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && { say "munged running (as $user)"; return 0; }
    sleep 0.5
  done
  die "munged did not answer (see /var/log/munge/munged.log)"
}

start_slurm() {
  local changed=$1
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  if [[ -n $changed ]]; then  # a running daemon keeps its old config: restart it
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
  fi
  if ! alive "$CTLD_PID"; then
    /usr/sbin/slurmctld
    say "slurmctld started"
  fi
  if ! alive "$SLURMD_PID"; then
    /usr/sbin/slurmd
    say "slurmd started"
  fi
}

wait_idle() {
  local state=""
  for _ in $(seq 1 "$WAIT_S"); do
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)
    case $state in
      idle|mixed|allocated|completing) say "node $NODE is $state: cluster up"; sinfo; return 0 ;;
      drained*|draining|down*)
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  sinfo -N -l >&2 || true
  tail -n 15 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  die "node $NODE not idle after ${WAIT_S} s (state: ${state:-unknown}); logs above, full logs in /var/log/slurm/"
}

stop_one() {  # stop_one NAME PIDFILE
  local name=$1 pidfile=$2 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || { say "$name stopped (pid $pid)"; rm -f "$pidfile"; return 0; }
    sleep 0.25
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "$name killed (pid $pid did not stop in 10 s)"
}

status() {
  local rc=0
  for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    if alive "${pair#*:}"; then
      echo "${pair%%:*}: running (pid $(cat "${pair#*:}"))"
    else
      echo "${pair%%:*}: not running"; rc=1
    fi
  done
  if [[ $rc -eq 0 ]]; then sinfo; fi
  return $rc
}

case ${1:-} in
  start)
    need_root
    install_if_missing
    export PATH=$PATH:/usr/sbin
    write_conf
    start_munge
    start_slurm "$CHANGED"
    wait_idle
    ;;
  stop)
    need_root
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
    stop_one munged "$MUNGE_PID"
    ;;
  status)
    status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
