#!/usr/bin/env bash
# A live single-node SLURM cluster on localhost, for tests/test_slurm.py (and by hand).
#
#   tests/slurm/start.sh [STATE_DIR]    # prints "export SLURM_CONF=STATE_DIR/slurm.conf"
#   tests/slurm/stop.sh  [STATE_DIR]
#
# Installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server when missing (root + apt),
# writes a one-node slurm.conf (at least 4 CPUs, partition "debug") with accounting
# through slurmdbd so that sacct works, starts munged, MariaDB, slurmdbd, slurmctld and slurmd,
# and waits until sinfo shows the node idle. Exit 3 when it cannot run here (not root, no apt).
set -euo pipefail
D="${1:-${NEURECON_SLURM_DIR:-/tmp/neurecon-slurm}}"
mkdir -p "$D"/state "$D"/spool "$D"/log
D="$(cd "$D" && pwd)"

if [ "$(id -u)" != 0 ]; then
    echo "tests/slurm/start.sh: needs root (daemons and apt-get)" >&2
    exit 3
fi
need=()
for cmd in slurmctld:slurm-wlm slurmd:slurm-wlm sacct:slurm-client slurmdbd:slurmdbd \
    munged:munge mariadbd:mariadb-server; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${cmd%%:*}" ] || need+=("${cmd#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/slurm/start.sh: missing ${need[*]} and no apt-get to install them" >&2
        exit 3
    fi
    echo "installing ${need[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The packages' own services must not start with the default config.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; } || {
        rm -f /usr/sbin/policy-rc.d
        echo "tests/slurm/start.sh: apt-get install ${need[*]} failed" >&2
        exit 3
    }
    rm -f /usr/sbin/policy-rc.d
fi
export PATH="$PATH:/usr/sbin"

# munge: the packaged key; a fresh one if the package did not make it.
[ -s /etc/munge/munge.key ] || mungekey --create --force 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- munged --force

# MariaDB for slurmdbd (root through the unix socket, no password anywhere).
if ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    (mariadbd --user=mysql --skip-networking >"$D/log/mariadb.log" 2>&1 &)
fi
for _ in $(seq 60); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
# A fresh cluster starts its job ids at 1 again: give it fresh accounting too.
pgrep -x slurmdbd >/dev/null || mariadb -e 'drop database if exists slurm_acct_db'
mariadb -e 'create database if not exists slurm_acct_db'

host=localhost
cat >"$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$host
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$D/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
EOF
chmod 600 "$D/slurmdbd.conf"

# At least 4 job slots, whatever the cores: the test jobs are tiny, and the tests run a
# 1-minute job beside a sweep whose two jobs must run at once.
cpus="$(nproc)"
[ "$cpus" -ge 4 ] || cpus=4
mem_mb="$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))"
cat >"$D/slurm.conf" <<EOF
ClusterName=neurecon
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
# Fast turnaround for tests: short kill grace, frequent scheduling.
KillWait=2
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
JobAcctGatherFrequency=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$D/slurm.conf"

# slurmdbd reads slurmdbd.conf beside $SLURM_CONF.
pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 60); do
    sacctmgr -i show cluster >/dev/null 2>&1 && break
    sleep 0.5
done
sacctmgr -i add cluster neurecon >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || slurmctld -f "$SLURM_CONF"
pgrep -x slurmd >/dev/null || slurmd -f "$SLURM_CONF" -N "$host"

for _ in $(seq 120); do
    state="$(sinfo -h -N -o '%t' 2>/dev/null || true)"
    if [ "$state" = idle ]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "tests/slurm/start.sh: the node did not become idle (sinfo: '${state:-}'); logs in $D/log" >&2
exit 1
