#!/usr/bin/env bash
# Start a single-node Slurm (slurmctld + slurmd) for Granary's Slurm executor tests.
# Installs Debian's slurm-wlm if missing, writes a minimal slurm.conf (no munge: auth/none, cred/none),
# starts both daemons and waits until `sinfo` answers. Idempotent: re-running restarts the daemons.
# Usage: scripts/slurm-up.sh [--stop]
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/granary-slurm
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))

stop() {  # stop the daemons this script started, by the pids they wrote
  for f in "$STATE/slurmctld.pid" "$STATE/slurmd.pid"; do
    if [[ -f "$f" ]]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
  done
}

if [[ "${1:-}" == "--stop" ]]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm >/dev/null
fi

mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm
cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=granary
SlurmctldHost=$HOST
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
ReturnToService=2
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=granary Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

stop
sleep 0.5
slurmctld
slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|alloc'; then
    echo "slurm up: $(sinfo -h -o '%P %D %T %c')"
    exit 0
  fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
echo "slurm did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
