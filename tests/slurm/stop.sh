#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh started: its SLURM daemons (by their pid files),
# and MariaDB and munged (by name: this is a test machine). The packages stay.
set -uo pipefail
D="${1:-${NEURECON_SLURM_DIR:-/tmp/neurecon-slurm}}"
for name in slurmd slurmctld slurmdbd; do
    [ -f "$D/$name.pid" ] && kill "$(cat "$D/$name.pid")" 2>/dev/null
done
pkill -x mariadbd 2>/dev/null
pkill -x munged 2>/dev/null
daemons=(slurmd slurmctld slurmdbd mariadbd)
running() {
    for name in "${daemons[@]}"; do pgrep -x "$name" >/dev/null && return 0; done
    return 1
}
for _ in $(seq 40); do
    running || exit 0
    sleep 0.25
done
for name in "${daemons[@]}"; do pkill -9 -x "$name" 2>/dev/null; done
exit 0
