#!/usr/bin/env bash
# A two-node Docker Swarm on one machine, for the swarm tests and for trying the stack by hand (as root):
#   swarm/cluster.sh up [IMAGE]   the main daemon becomes the manager; a second dockerd in the network namespace
#                                 "node2" (10.99.0.2, a veth from the host's 10.99.0.1) joins as a worker
#                                 labelled room=kitchen; IMAGE (default smarthome:latest) is copied to it
#   swarm/cluster.sh down         remove all of it; the main daemon is left as it was found
#   swarm/cluster.sh node2 ARGS   the docker CLI on node2 (e.g. `swarm/cluster.sh node2 ps`)
# `up` first clears what an earlier run left (so it is safe after a failed start, and running it twice gives a
# fresh cluster), and refuses to touch a main daemon that is already in a swarm it did not make. `down` is
# safe to run any time, also when nothing is up. Needs: dockerd, iproute2, util-linux (nsenter, unshare).
set -euo pipefail

NS=node2
HOST_IF=veth-s2h HOST_IP=10.99.0.1
NS_IF=veth-s2n NODE2_IP=10.99.0.2
NODE2_DATA=/var/lib/docker-node2
NODE2_EXEC=/var/run/docker-node2
NODE2_PID=/var/run/docker-node2.pid
NODE2_SOCK=/var/run/docker-node2.sock
NODE2_LOG=/var/log/docker-node2.log
CGROUP_PARENT=docker-node2
STATE=/var/run/smarthome-swarm   # "manager": this script ran swarm init; "gwbridge": docker_gwbridge was there before

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
node2() { docker -H "unix://$NODE2_SOCK" "$@"; }
node2_alive() { [ -f "$NODE2_PID" ] && kill -0 "$(cat "$NODE2_PID")" 2>/dev/null; }
swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }

# Poll `$@` until it succeeds, at most $1 seconds; the pause is the polling interval.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# --- down: every step tolerates its part being absent -------------------------------------------------

swarm_containers() { docker ps -q --filter label=com.docker.swarm.task.id; }
no_swarm_containers() { [ -z "$(swarm_containers)" ]; }

leave_swarms() {
  if node2_alive; then
    timeout 20 docker -H "unix://$NODE2_SOCK" swarm leave --force >/dev/null 2>&1 || true
  fi
  if [ -e "$STATE/manager" ]; then
    # Stacks first, so each task stops on its own SIGTERM; leaving the swarm would just kill them.
    for stack in $(docker stack ls --format '{{.Name}}' 2>/dev/null); do docker stack rm "$stack" >/dev/null || true; done
    wait_for 30 no_swarm_containers || log "swarm tasks still running after 30 s; leaving anyway"
    [ "$(swarm_state)" = inactive ] || docker swarm leave --force >/dev/null
    rm -f "$STATE/manager"
    touch "$STATE/made"   # for remove_network
  fi
}

# The pids of everything node2's daemon started: its containers (in the cgroup it was given) and its
# containerd and shims (in its network namespace). A daemon that died hard leaves all of these running.
node2_processes() {
  cat /sys/fs/cgroup/*/"$CGROUP_PARENT"/*/cgroup.procs /sys/fs/cgroup/"$CGROUP_PARENT"/*/cgroup.procs 2>/dev/null || true
  ip netns pids "$NS" 2>/dev/null || true
}

stop_node2() {
  if node2_alive; then
    local pid; pid=$(cat "$NODE2_PID")
    kill -TERM "$pid"
    wait_for 20 bash -c "! kill -0 $pid" || { log "node2 dockerd ignored SIGTERM for 20 s: SIGKILL"; kill -KILL "$pid" || true; }
  fi
  local leftovers; leftovers=$(node2_processes | sort -u)
  if [ -n "$leftovers" ]; then
    log "killing what node2's daemon left running: $(echo $leftovers)"
    kill -KILL $leftovers 2>/dev/null || true
    # Their shims' sockets stay behind; one that no process listens on any more is garbage.
    local listening; listening=$(ss -xlH 2>/dev/null | awk '{print $5}')
    for sock in /run/containerd/s/*; do
      [ -S "$sock" ] && ! grep -qxF "$sock" <<<"$listening" && rm -f "$sock"
    done
  fi
  find /sys/fs/cgroup -depth -type d -path "*/$CGROUP_PARENT*" -exec rmdir {} + 2>/dev/null || true
  rm -rf "$NODE2_DATA" "$NODE2_EXEC" "$NODE2_SOCK" "$NODE2_PID"
}

gwbridge_removed() { ! docker network inspect docker_gwbridge >/dev/null 2>&1 || docker network rm docker_gwbridge; }

remove_network() {
  # Only a docker_gwbridge this script's swarm made (swarm init creates it): once the swarm's sandboxes are
  # gone it can be removed, which takes a moment after leaving.
  if [ -e "$STATE/made" ] && [ ! -e "$STATE/gwbridge" ]; then
    wait_for 20 gwbridge_removed || log "could not remove docker_gwbridge"
  fi
  ip link del "$HOST_IF" 2>/dev/null || true   # netns deletion would free it only later
  ip netns del "$NS" 2>/dev/null || true
}

down() {
  leave_swarms
  stop_node2
  remove_network
  rm -rf "$STATE"
  log "down: main daemon swarm state '$(swarm_state)', no node2"
}

# --- up ---------------------------------------------------------------------------------------------

make_network() {
  ip netns add "$NS"
  ip link add "$HOST_IF" type veth peer name "$NS_IF"
  ip link set "$NS_IF" netns "$NS"
  ip addr add "$HOST_IP/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NS" addr add "$NODE2_IP/24" dev "$NS_IF"
  ip -n "$NS" link set "$NS_IF" up
  ip -n "$NS" link set lo up
}

start_node2() {
  # Not `ip netns exec`: it remounts /sys without the cgroup hierarchy dockerd needs. A mount namespace of its
  # own gets a fresh sysfs (for the namespace's network devices) with the cgroups moved back under it, and a
  # UTS namespace its own hostname. Images by ID never pull: DOCKER_SERVICE_PREFER_OFFLINE_IMAGE.
  # shellcheck disable=SC2016  # expanded by the inner shell
  setsid nsenter --net="/var/run/netns/$NS" unshare --mount --uts --propagation slave sh -c '
    hostname node2
    cgroups=$(mktemp -d)
    mount --rbind /sys/fs/cgroup "$cgroups"
    mount -t sysfs sysfs /sys
    mount --move "$cgroups" /sys/fs/cgroup
    exec env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd --data-root "$1" --exec-root "$2" --pidfile "$3" \
      -H "unix://$4" --cgroup-parent "/$5"' node2 \
    "$NODE2_DATA" "$NODE2_EXEC" "$NODE2_PID" "$NODE2_SOCK" "$CGROUP_PARENT" >"$NODE2_LOG" 2>&1 </dev/null &
  wait_for 30 node2 info || die "node2's dockerd did not answer within 30 s; see $NODE2_LOG"
}

node2_ready() {
  [ "$(docker node ls --filter role=worker --format '{{.Status}}')" = Ready ]
}

make_swarm() {
  touch "$STATE/manager"
  # The dispatcher heartbeat (default 5 s) sets how soon a silent node is marked down.
  docker swarm init --advertise-addr "$HOST_IP" --listen-addr "$HOST_IP:2377" --data-path-addr "$HOST_IP" \
    --default-addr-pool 10.98.0.0/16 --default-addr-pool-mask-length 24 --dispatcher-heartbeat 1s >/dev/null
  node2 swarm join --token "$(docker swarm join-token -q worker)" --advertise-addr "$NODE2_IP" \
    --listen-addr "$NODE2_IP:2377" --data-path-addr "$NODE2_IP" "$HOST_IP:2377" >/dev/null
  wait_for 30 node2_ready || die "node2 did not become Ready within 30 s"
  docker node update --label-add room=kitchen "$(node2 info --format '{{.Swarm.NodeID}}')" >/dev/null
}

up() {
  local image=${1:-smarthome:latest}
  docker image inspect "$image" >/dev/null 2>&1 || die "no image $image: build it first (docker compose build)"
  if [ "$(swarm_state)" != inactive ] && [ ! -e "$STATE/manager" ]; then
    die "the main Docker daemon is already in a swarm this script did not make; refusing to touch it"
  fi
  down   # whatever an earlier (maybe failed) run left
  trap 'status=$?; [ $status -eq 0 ] || { log "up failed: removing what it made"; down; }' EXIT
  mkdir -p "$STATE"
  if docker network inspect docker_gwbridge >/dev/null 2>&1; then touch "$STATE/gwbridge"; fi
  make_network
  start_node2
  make_swarm
  docker save "$image" | node2 load >/dev/null   # no registry: the same image, and so the same ID, on node2
  log "up: manager $HOST_IP (this daemon), worker node2 $NODE2_IP (room=kitchen, $NODE2_SOCK), image $image"
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  node2) shift; node2 "$@" ;;
  *) echo "usage: $0 up [IMAGE] | down | node2 DOCKER-ARGS" >&2; exit 2 ;;
esac
