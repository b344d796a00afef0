#!/usr/bin/env bash
# A single-node Slurm cluster on 127.0.0.1, for ratchet's tests and for
# trying the Slurm backend by hand: munged, slurmctld and slurmd, with every
# file (key, sockets, state, logs, slurm.conf) in one directory.
#
#   tests/slurm/cluster.sh start DIR [PID]   # prints SLURM_CONF=DIR/slurm.conf once the node is idle;
#                                            # with PID, the cluster stops when that process has exited
#   tests/slurm/cluster.sh stop DIR
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge packages, and root
# (slurmd runs jobs as their submitting user). Ports are picked free at start.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR [PID]}
dir=${2:?usage: cluster.sh start|stop DIR [PID]}
owner=${3:-}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    for d in slurmd slurmctld munged; do
        if [[ -f $dir/$d.pid ]]; then
            kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
        fi
    done
    for d in slurmd slurmctld munged; do
        if [[ -f $dir/$d.pid ]]; then
            pid=$(cat "$dir/$d.pid")
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$d.pid"
        fi
    done
}

if [[ $cmd == stop ]]; then
    stop
    exit 0
fi
[[ $cmd == start ]] || { echo "usage: cluster.sh start|stop DIR" >&2; exit 2; }

for p in munged mungekey slurmctld slurmd sbatch squeue sinfo; do
    command -v "$p" >/dev/null || PATH=$PATH:/usr/sbin
    command -v "$p" >/dev/null || {
        echo "cluster.sh: $p not found; install Debian's slurmctld slurmd slurm-client munge" >&2
        exit 3
    }
done

stop
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir"

# munge: its own key, socket and files. It insists on private directories.
if [[ ! -f $dir/munge.key ]]; then
    mungekey --create --keyfile="$dir/munge.key" --force
fi
chmod 600 "$dir/munge.key"
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge.seed"

# Two free TCP ports on 127.0.0.1.
read -r ctld_port slurmd_port < <(python3 - <<'PY'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
PY
)

node=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
cat > "$dir/slurm.conf" <<CONF
ClusterName=ratchet-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for an hour (no slurmdbd here).
MinJobAge=3600
# Time limits are checked often and enforced without grace, so a test of a
# timed-out job takes about a minute, not several.
KillWait=2
OverTimeLimit=0
SchedulerParameters=sched_interval=2
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Up when the node is idle.
for _ in $(seq 150); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    if [[ $state == idle ]]; then
        if [[ -n $owner ]]; then
            # A watcher in its own session, holding none of our output.
            setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
                watch "$owner" "$(realpath "$0")" "$dir" </dev/null >/dev/null 2>&1 &
        fi
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "cluster.sh: the node did not come up (state: ${state:-none}); logs in $dir/log" >&2
tail -n 20 "$dir"/log/*.log >&2 || true
exit 1
