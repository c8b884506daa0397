#!/usr/bin/env bash
# Run a command inside a network namespace of its own: loopback plus one veth
# address (10.213.0.1), and a default route that leads nowhere. WebRTC's ICE
# offers host addresses, never loopback; inside this namespace the only host
# address is ours, so no test traffic can reach any address outside
# namespaces the test run created itself.
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
# A default route, as every viewer's machine has: for a page without camera permission Chromium gathers only
# on the default route's interface (offered as an mDNS name), so without one it offers no candidate at all and
# the live tests would not take the path real browsers take.  It leads nowhere (nvr1 is in this namespace and
# has no address); the name servers stay unreachable, so a lookup fails at once as it did without the route.
ip -n "$ns" route add default dev nvr0
for server in $(awk '$1 == "nameserver" { print $2 }' /etc/resolv.conf 2>/dev/null); do
  ip -n "$ns" route add unreachable "$server" 2>/dev/null || true
done
ip netns exec "$ns" "$@"
