#!/usr/bin/env bash
# Install nvr on a Debian 12 (bookworm) station server, from this source tree.
#
# This script is the README's "Deployment" section: the steps a station administrator takes
# on a bare server. tests/system/ boots a real systemd in a container and runs this very
# script there, so the instructions and the test cannot drift apart.
#
#   sudo deploy/install-station.sh [--config FILE] [--admin NAME] [--wheels DIR] [--no-start]
#
#   --config FILE   install FILE as /etc/nvr/config.yaml (default: keep the one there; on a first
#                   run without it, the annotated example is installed for you to edit: edit it and
#                   run the script again)
#   --admin NAME    create the first console user NAME with the admin role; the password is asked
#                   for, or read from standard input when that is not a terminal
#   --wheels DIR    install the Python packages from DIR only, for a server without Internet access
#                   (fill DIR elsewhere: pip wheel -w DIR -c constraints.txt . 'setuptools>=61' wheel)
#   --no-start      install and enable the service, but do not (re)start it
#   --print-packages  print the Debian packages this script installs, and exit
#
# Safe to run again (to upgrade to a newer source tree, or after editing the config): it keeps
# the storage marker, users, recordings and credentials that are already there.
set -euo pipefail

# The Debian packages a station needs (the Python wheels bring FFmpeg, OpenCV and the rest).
PACKAGES=(python3 python3-venv)

PREFIX=/opt/nvr                    # the virtual environment: /opt/nvr/venv (systemd/nvr.service runs it)
CONFIG=/etc/nvr/config.yaml
STORAGE=/var/lib/nvr               # the recording disk's mount point; the unit may write only here
CREDSTORE=/etc/credstore           # systemd's LoadCredential=NAME looks here (root only, 0700)
UNIT=/etc/systemd/system/nvr.service
DROPIN=/etc/systemd/system/nvr.service.d
SRC=$(cd "$(dirname "$0")/.." && pwd)
NVR=$PREFIX/venv/bin/nvr

config_src="" admin="" wheels="" start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config_src=$2; shift 2 ;;
    --admin) admin=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    --print-packages) echo "${PACKAGES[*]}"; exit 0 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }
die() { printf 'install-station: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo $0 ...)"
[ -f "$SRC/setup.cfg" ] && [ -f "$SRC/systemd/nvr.service" ] || die "$SRC is not an nvr source tree"

step "1. Debian packages: ${PACKAGES[*]}"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all installed"
fi

step "2. the nvr system user (it owns $STORAGE and nothing else)"
if getent passwd nvr >/dev/null; then
  echo "user nvr exists"
else
  useradd --system --user-group --home-dir "$STORAGE" --no-create-home --shell /usr/sbin/nologin nvr
  echo "created user nvr"
fi

step "3. nvr into $PREFIX/venv, from $SRC"
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
pip_opts=(-q --disable-pip-version-check -c "$SRC/constraints.txt")
[ -z "$wheels" ] || pip_opts+=(--no-index --find-links "$wheels")
# pip builds in the source tree (build/, *.egg-info): build from a copy, so the tree may be read-only.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' -cf - . | tar -C "$build" -xf -
"$PREFIX/venv/bin/pip" install "${pip_opts[@]}" "$build"
install -D -m 0644 "$SRC/README.md" /usr/share/doc/nvr/README.md
"$NVR" --version

step "4. the configuration: $CONFIG (root:nvr 0640)"
install -d -m 0750 -g nvr /etc/nvr
install -d -m 0700 "$CREDSTORE"
if [ -n "$config_src" ]; then
  install -m 0640 -g nvr "$config_src" "$CONFIG"
  echo "installed $config_src"
elif [ ! -f "$CONFIG" ]; then
  install -m 0640 -g nvr "$SRC/config.yaml" "$CONFIG"
  echo "installed the annotated example. Edit $CONFIG (station, cameras, storage.path: $STORAGE),"
  echo "then run this script again (it asks for each camera password, or put them in $CREDSTORE/NAME)."
  exit 0
fi

step "5. camera passwords: one file per \${NAME} in the config, in $CREDSTORE (root only)"
# ${NAME} references outside comments; the unit gets one LoadCredential=NAME for each.
mapfile -t names < <(sed -e 's/^[[:space:]]*#.*$//' -e 's/[[:space:]]#.*$//' "$CONFIG" \
  | grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' | tr -d '${}' | sort -u)
for name in "${names[@]}"; do
  if [ -s "$CREDSTORE/$name" ]; then
    echo "$name: $CREDSTORE/$name"
  elif [ -t 0 ]; then
    read -r -s -p "$name (not echoed): " secret; echo
    (umask 077; printf '%s' "$secret" >"$CREDSTORE/$name")
    unset secret
  else
    die "$CREDSTORE/$name is missing: write the secret there (umask 077; printf '%s' 'PASSWORD' > $CREDSTORE/$name)"
  fi
done
install -d -m 0755 "$DROPIN"
{
  echo "# Written by deploy/install-station.sh from the \${NAME} references in $CONFIG."
  echo "[Service]"
  for name in "${names[@]}"; do echo "LoadCredential=$name"; done
} >"$DROPIN/credentials.conf"
chmod 0644 "$DROPIN/credentials.conf"

# nvr-admin runs an nvr command as the nvr user with the credentials the service gets.
install -m 0755 "$SRC/deploy/nvr-admin" /usr/local/sbin/nvr-admin
as_nvr() { /usr/local/sbin/nvr-admin "$@"; }

install -d -m 0750 -o nvr -g nvr "$STORAGE"
as_nvr check-config -c "$CONFIG"
configured=$(CREDENTIALS_DIRECTORY=$CREDSTORE "$PREFIX/venv/bin/python" -c 'import sys; from nvr.base import config
c = config.load(sys.argv[1]); print(c.storage.path, "https" if c.web.tls else "http", c.web.listen)' "$CONFIG")
read -r storage_path scheme listen <<<"$configured"
[ "$storage_path" = "$STORAGE" ] || die "storage.path is $storage_path; the unit may write only to $STORAGE"

step "6. the recording disk: $STORAGE"
mountpoint -q "$STORAGE" || echo "note: $STORAGE is not a mount point; mount the recording disk there first (fstab)"
chown nvr:nvr "$STORAGE"
chmod 0750 "$STORAGE"
as_nvr init-storage -c "$CONFIG"

if [ -n "$admin" ]; then
  step "7. the first admin: $admin"
  if as_nvr user list -c "$CONFIG" | awk '{print $1}' | grep -qx -- "$admin"; then
    echo "user $admin exists"
  elif [ -t 0 ]; then
    as_nvr user add -c "$CONFIG" "$admin" --role admin
  else
    as_nvr user add -c "$CONFIG" "$admin" --role admin --password-stdin
  fi
fi

step "8. the service: $UNIT"
install -m 0644 "$SRC/systemd/nvr.service" "$UNIT"
systemctl daemon-reload
systemctl enable nvr.service
if [ "$start" = 0 ]; then
  echo "enabled; not started (--no-start)"
  exit 0
fi
# Type=notify: this returns once the daemon has sent READY=1 (or failed to).
if ! systemctl restart nvr.service; then
  systemctl --no-pager status nvr.service || true
  journalctl -u nvr.service -b --no-pager -n 50 || true
  die "nvr did not start: see the log above"
fi

step "9. check: active, answering, no seccomp refusals"
systemctl --no-pager status nvr.service | head -n 12 || true
"$PREFIX/venv/bin/python" - "$scheme://$listen/healthz" <<'EOF'
import json, ssl, sys, urllib.error, urllib.request
try:  # the station's own certificate may be self-signed: this only asks whether it answers
    reply = urllib.request.urlopen(sys.argv[1], timeout=10, context=ssl._create_unverified_context())
except urllib.error.HTTPError as exc:
    reply = exc  # 503: up, but a camera or recorder is not healthy yet
print(f"GET /healthz: {reply.status}", json.load(reply))
EOF
if journalctl -u nvr.service -b --no-pager -q | grep -E 'Operation not permitted|EPERM|seccomp|SIGSYS'; then
  echo "WARNING: the journal shows refused system calls (above); see SystemCallFilter in $UNIT" >&2
fi
echo "nvr is installed and running. Sign in at $scheme://$listen/ ; journalctl -u nvr -f follows its log."
