#!/usr/bin/env bash
# Install the edgeloop agent on a Raspberry Pi (Raspberry Pi OS Bookworm, 64- or 32-bit) or a
# Coral Dev Board (Mendel). Run as root from a checkout or an unpacked release:
#   sudo systemd/install-pi.sh --device-id pi-01 --broker mqtt.example.org:8883 --trust-key host.pub
#   sudo systemd/install-pi.sh --config-dir pi-01/     # what `edge-deploy provision` wrote
#                                                      # with --install-dir /etc/edgeloop
# Options: --runtime litert|tflite-runtime (default: litert when a wheel exists for this Python),
#          --src DIR (the edgeloop source, default: this script's parent), --no-start,
#          --root DIR: a staging root (tests, image builds): files go under DIR, and what would
#          change the running system (apt-get, users, the venv, udevadm, systemctl) is printed
#          as "would run: ..." instead; agent.toml then comes from $PYTHON -m agent (in --src).
set -euo pipefail

DEVICE_ID="$(hostname)"; BROKER=""; TRUST_KEY=""; RUNTIME=""; START=1; ROOT=""; CONFIG_DIR=""
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/edgeloop; ETC=/etc/edgeloop; STATE=/var/lib/edgeloop

while [ $# -gt 0 ]; do
  case "$1" in
    --device-id) DEVICE_ID="$2"; shift 2 ;;
    --broker) BROKER="$2"; shift 2 ;;
    --trust-key) TRUST_KEY="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --src) SRC="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
    --config-dir) CONFIG_DIR="$2"; shift 2 ;;
    *) echo "install-pi.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$ROOT" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "install-pi.sh: run as root (sudo)" >&2; exit 2; }
fi
if [ -n "$CONFIG_DIR" ]; then
  [ -f "$CONFIG_DIR/agent.toml" ] || { echo "install-pi.sh: $CONFIG_DIR/agent.toml missing (edge-deploy provision writes it)" >&2; exit 2; }
else
  [ -n "$BROKER" ] || { echo "install-pi.sh: --broker HOST:PORT (or --config-dir DIR) is required" >&2; exit 2; }
  [ -f "$TRUST_KEY" ] || { echo "install-pi.sh: --trust-key FILE (the host's public key) is required" >&2; exit 2; }
fi

run() {  # a change to the running system: printed in a staging root
  if [ -n "$ROOT" ]; then echo "would run: $*"; else "$@"; fi
}

run apt-get update -qq
run apt-get install -y -qq python3-venv python3-pip
[ -n "$ROOT" ] || getent group plugdev >/dev/null || groupadd --system plugdev
[ -n "$ROOT" ] || getent group apex >/dev/null || groupadd --system apex
[ -n "$ROOT" ] || id edgeloop >/dev/null 2>&1 || useradd --system --home-dir "$STATE" \
  --shell /usr/sbin/nologin --groups plugdev,apex,dialout,video edgeloop

if [ -n "$ROOT" ]; then
  RUNTIME="${RUNTIME:-litert}"
  run python3 -m venv "$PREFIX/venv"
  run "$PREFIX/venv/bin/pip" install -q "$SRC[$RUNTIME]"
  config_example() { PYTHONPATH="$SRC" "${PYTHON:-python3}" -m agent config-example; }
else
  python3 -m venv "$PREFIX/venv"
  if [ -z "$RUNTIME" ]; then
    if "$PREFIX/venv/bin/pip" download -q --no-deps -d /tmp/edgeloop-probe ai-edge-litert >/dev/null 2>&1; then
      RUNTIME=litert
    else
      RUNTIME=tflite-runtime   # 32-bit Raspberry Pi OS: no ai-edge-litert wheel
    fi
  fi
  "$PREFIX/venv/bin/pip" install -q "$SRC[$RUNTIME]"
  config_example() { "$PREFIX/venv/bin/edge-agent" config-example; }
fi
install -d -m 0755 "$ROOT$PREFIX"
cp "$SRC/README.md" "$ROOT$PREFIX/README.md"

install -d -m 0755 "$ROOT$ETC" "$ROOT$ETC/trust"
if [ -n "$CONFIG_DIR" ]; then
  # a provisioned directory: agent.toml, the device certificate and key, the CA, trust/
  cp -r "$CONFIG_DIR"/. "$ROOT$ETC/"
  for key in "$ROOT$ETC"/*.key; do
    [ -e "$key" ] || continue
    chmod 0600 "$key"
    run chown edgeloop:edgeloop "${key#"$ROOT"}"
  done
else
  install -m 0644 "$TRUST_KEY" "$ROOT$ETC/trust/host.pub"
  if [ ! -f "$ROOT$ETC/agent.toml" ]; then
    config_example \
      | sed -e "s|^device_id = .*|device_id = \"$DEVICE_ID\"|" \
            -e "s|^trust_keys = .*|trust_keys = [\"$ETC/trust/host.pub\"]|" \
            -e "s|^host = .*|host = \"${BROKER%:*}\"|" \
            -e "s|^port = .*|port = ${BROKER##*:}|" > "$ROOT$ETC/agent.toml"
  fi
fi
touch "$ROOT$ETC/agent.env"; chmod 0600 "$ROOT$ETC/agent.env"

install -d -m 0755 "$ROOT/etc/systemd/system" "$ROOT/etc/udev/rules.d"
install -m 0644 "$SRC/systemd/edgeloop-agent.service" "$ROOT/etc/systemd/system/edgeloop-agent.service"
install -m 0644 "$SRC/systemd/99-edgeloop-coral.rules" "$ROOT/etc/udev/rules.d/99-edgeloop-coral.rules"
run udevadm control --reload-rules && run udevadm trigger || true
run systemctl daemon-reload
if [ "$START" -eq 1 ]; then
  run systemctl enable --now edgeloop-agent.service
  [ -n "$ROOT" ] || systemctl --no-pager status edgeloop-agent.service || true
fi
echo "edgeloop agent installed ($RUNTIME); config $ETC/agent.toml; logs: journalctl -u edgeloop-agent"
