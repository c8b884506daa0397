#!/usr/bin/env bash
# Run a command inside a network namespace of its own: loopback plus one veth
# address (10.213.0.1). WebRTC's ICE offers host addresses, never loopback;
# inside this namespace the only host address is ours, so no test traffic can
# reach any address outside namespaces the test run created itself.
set -euo pipefail
ns="nvr-test-$$"
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! ip netns add "$ns" 2>/dev/null; then
  echo "note: cannot create a network namespace (needs root and iproute2); running in the host's network" >&2
  exec "$@"
fi
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add nvr0 type veth peer name nvr1
ip -n "$ns" addr add 10.213.0.1/24 dev nvr0
ip -n "$ns" link set nvr0 up
ip -n "$ns" link set nvr1 up
ip netns exec "$ns" "$@"
