#!/usr/bin/env bash
# Install the edgeloop agent on a Raspberry Pi (Raspberry Pi OS Bookworm, 64- or 32-bit) or a
# Coral Dev Board (Mendel). Run as root from a checkout or an unpacked release:
#   sudo systemd/install-pi.sh --device-id pi-01 --broker mqtt.example.org:8883 --trust-key host.pub
# Options: --runtime litert|tflite-runtime (default: litert when a wheel exists for this Python),
#          --src DIR (the edgeloop source, default: this script's parent), --no-start.
set -euo pipefail

DEVICE_ID="$(hostname)"; BROKER=""; TRUST_KEY=""; RUNTIME=""; START=1
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
    *) echo "install-pi.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install-pi.sh: run as root (sudo)" >&2; exit 2; }
[ -n "$BROKER" ] || { echo "install-pi.sh: --broker HOST:PORT is required" >&2; exit 2; }
[ -f "$TRUST_KEY" ] || { echo "install-pi.sh: --trust-key FILE (the host's public key) is required" >&2; exit 2; }

apt-get update -qq
apt-get install -y -qq python3-venv python3-pip >/dev/null
getent group plugdev >/dev/null || groupadd --system plugdev
getent group apex >/dev/null || groupadd --system apex
id edgeloop >/dev/null 2>&1 || useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin \
  --groups plugdev,apex,dialout,video edgeloop

python3 -m venv "$PREFIX/venv"
if [ -z "$RUNTIME" ]; then
  if "$PREFIX/venv/bin/pip" download -q --no-deps -d /tmp/edgeloop-probe ai-edge-litert >/dev/null 2>&1; then
    RUNTIME=litert
  else
    RUNTIME=tflite-runtime   # 32-bit Raspberry Pi OS: no ai-edge-litert wheel
  fi
fi
"$PREFIX/venv/bin/pip" install -q "$SRC[$RUNTIME]"
cp "$SRC/README.md" "$PREFIX/README.md"

install -d -m 0755 "$ETC" "$ETC/trust"
install -m 0644 "$TRUST_KEY" "$ETC/trust/host.pub"
if [ ! -f "$ETC/agent.toml" ]; then
  "$PREFIX/venv/bin/edge-agent" config-example \
    | sed -e "s|^device_id = .*|device_id = \"$DEVICE_ID\"|" \
          -e "s|^trust_keys = .*|trust_keys = [\"$ETC/trust/host.pub\"]|" \
          -e "s|^host = .*|host = \"${BROKER%:*}\"|" \
          -e "s|^port = .*|port = ${BROKER##*:}|" > "$ETC/agent.toml"
fi
touch "$ETC/agent.env"; chmod 0600 "$ETC/agent.env"

install -m 0644 "$SRC/systemd/edgeloop-agent.service" /etc/systemd/system/edgeloop-agent.service
install -m 0644 "$SRC/systemd/99-edgeloop-coral.rules" /etc/udev/rules.d/99-edgeloop-coral.rules
udevadm control --reload-rules && udevadm trigger || true
systemctl daemon-reload
if [ "$START" -eq 1 ]; then
  systemctl enable --now edgeloop-agent.service
  systemctl --no-pager status edgeloop-agent.service || true
fi
echo "edgeloop agent installed ($RUNTIME); config $ETC/agent.toml; logs: journalctl -u edgeloop-agent"
