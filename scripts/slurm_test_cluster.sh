#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests (and for trying
# `snakemake --profile slurm` on a laptop): Debian's slurmctld + slurmd + slurmdbd,
# munge for authentication, MariaDB for the accounting database that `sacct` (which
# the snakemake slurm executor polls) reads. No cgroups, no systemd: the daemons are
# started directly, so it also works in containers.
#
#   bash scripts/slurm_test_cluster.sh [start]   install if missing, start, wait until the node is idle
#   bash scripts/slurm_test_cluster.sh stop      stop the daemons this script started
#   bash scripts/slurm_test_cluster.sh env       print `export SLURM_CONF=...` for the shell
#
# Needs root (apt-get, daemons). Idempotent: `start` on a running cluster only checks
# it. Every setting lives in $LAYERPRUNE_SLURM_DIR (default /tmp/layerprune-slurm);
# client commands find it through SLURM_CONF=$LAYERPRUNE_SLURM_DIR/slurm.conf.
# The account is $LAYERPRUNE_SLURM_ACCOUNT (default `layerprune`), the partition `debug`.
set -euo pipefail

DIR="${LAYERPRUNE_SLURM_DIR:-/tmp/layerprune-slurm}"
CONFIG_CHANGED=""
ACCOUNT="${LAYERPRUNE_SLURM_ACCOUNT:-layerprune}"
PARTITION=debug
CLUSTER=layerprune
export SLURM_CONF="$DIR/slurm.conf"

die() { echo "slurm_test_cluster: $*" >&2; exit 1; }
log() { echo "slurm_test_cluster: $*" >&2; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v munged >/dev/null || missing+=(munge)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get on this machine"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    # Package installs must not try to start services (there may be no init system).
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

write_config() {
    mkdir -p "$DIR"/{state,spool,log}
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    # Leave 1 GiB to the system; SLURM rejects a job asking more than RealMemory.
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    cat >"$DIR/slurm.conf.new" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups: plain process tracking, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
# sacct shows the executor's --comment (rule_<name>_wildcards_...).
AccountingStoreFlags=job_comment
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$DIR/slurm.conf.new" "$DIR/slurm.conf"; then
        rm "$DIR/slurm.conf.new"
    else
        mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
        CONFIG_CHANGED=1
    fi
    # Commands inside a job must find the config without SLURM_CONF: the snakemake
    # slurm-jobstep plugin drops every SLURM_* variable before its inner `srun`. A real
    # cluster has /etc/slurm/slurm.conf; so does this one, as a link to ours. A real
    # cluster's config there is never replaced.
    local system=/etc/slurm/slurm.conf
    if [ -e "$system" ] && [ ! -L "$system" ]; then
        die "$system exists and is not this script's link: is this machine part of a real cluster? (set LAYERPRUNE_SLURM_DIR and remove it only if it is not)"
    fi
    mkdir -p /etc/slurm && ln -sfn "$DIR/slurm.conf" "$system"
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    # A fresh key where the package did not make one.
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --force --keyfile /etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then runuser -u munge -- munged
    else munged --force; fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged did not start (see /var/log/munge/munged.log)"
}

start_mariadb() {
    if mariadb-admin ping >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null || die "mariadb-install-db failed"
    fi
    (setsid mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking=0 --bind-address=127.0.0.1 \
        >"$DIR/log/mariadb.log" 2>&1 &)
    for _ in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "mariadbd did not start (see $DIR/log/mariadb.log)"
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemon() {  # name pidfile cmd...
    local name="$1" pidfile="$2"; shift 2
    if running "$pidfile"; then return 0; fi
    "$@" || die "$name did not start (see $DIR/log/$name.log)"
}

wait_for() {  # seconds description cmd...
    local seconds="$1" what="$2"; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what (logs in $DIR/log)"
}

node_idle() { sinfo -h -N -o '%T' | grep -qx idle; }

start() {
    install_packages
    write_config
    start_munge
    start_mariadb
    # slurmdbd reads slurmdbd.conf beside $SLURM_CONF.
    start_daemon slurmdbd "$DIR/slurmdbd.pid" slurmdbd
    wait_for 30 "slurmdbd does not answer" sacctmgr -n show cluster
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="layerprune tests" organization=layerprune >/dev/null
    fi
    if ! sacctmgr -n -P show assoc where user=root account="$ACCOUNT" format=user | grep -qx root; then
        sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    fi
    if [ -n "${CONFIG_CHANGED:-}" ] && running "$DIR/slurmctld.pid"; then
        log "slurm.conf changed: reconfiguring the running daemons"
        scontrol reconfigure || die "scontrol reconfigure failed (logs in $DIR/log)"
    fi
    start_daemon slurmctld "$DIR/slurmctld.pid" slurmctld -f "$DIR/slurm.conf"
    wait_for 30 "slurmctld does not answer" scontrol ping
    start_daemon slurmd "$DIR/slurmd.pid" slurmd -f "$DIR/slurm.conf"
    if ! (for _ in $(seq 150); do node_idle && exit 0; sleep 0.2; done; exit 1); then
        # A node left DOWN/DRAIN by an earlier run comes back here.
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        wait_for 30 "the node never became idle: $(sinfo -h -N -o '%T %E' 2>&1)" node_idle
    fi
    log "up: SLURM_CONF=$SLURM_CONF account=$ACCOUNT partition=$PARTITION"
}

stop() {
    local name
    for name in slurmd slurmctld slurmdbd; do
        if running "$DIR/$name.pid"; then
            kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
        fi
    done
    for name in slurmd slurmctld slurmdbd; do
        for _ in $(seq 50); do running "$DIR/$name.pid" || break; sleep 0.1; done
    done
    # Leave no link to a stopped cluster: while /etc/slurm/slurm.conf names a controller that
    # is down, every `scontrol` waits 9 s for it, and snakemake's slurm plugin runs one each
    # time snakemake starts, whatever the executor.
    local system=/etc/slurm/slurm.conf
    if [ -L "$system" ] && [ "$(readlink "$system")" = "$DIR/slurm.conf" ]; then
        rm -f "$system"
    fi
    log "stopped slurmd, slurmctld, slurmdbd (munged and mariadb keep running)"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) die "usage: $0 [start|stop|env]" ;;
esac
