#!/bin/sh
# The broker image's entrypoint (deploy/mosquitto/Dockerfile): rebuild the broker's
# identity state, make development TLS certificates if there are none, then hand over to
# the eclipse-mosquitto image's own entrypoint.
#
# passwd and the effective acl are state, kept in the data volume (see mosquitto.conf):
#  - hw-collector's password is (re)set from HW_MQTT_COLLECTOR_PASSWORD at every start;
#  - $data/acl = the committed template ($config/acl), a blank line, then the per-gateway
#    blocks of $data/gateways.acl, rebuilt at every start exactly as `hazardwatch gateway
#    add` renders it (hazardwatch.gateways.render_acl; tests/test_gateway_cmd.py checks
#    that both give the same file);
#  - $certs (the TLS listener): a development CA and server certificate are made with
#    dev-certs.sh when server.crt is missing, for the names in HW_MQTT_TLS_NAMES.
# The directories default to the image's; the HW_MOSQUITTO_* variables exist for the test.
set -eu
config=${HW_MOSQUITTO_CONFIG:-/mosquitto/config}
data=${HW_MOSQUITTO_DATA:-/mosquitto/data}
certs=${HW_MOSQUITTO_CERTS:-/mosquitto/certs}
here=$(cd "$(dirname "$0")" && pwd)
umask 077

[ -f "$data/passwd" ] || : >"$data/passwd"
if [ -n "${HW_MQTT_COLLECTOR_PASSWORD:-}" ]; then
	mosquitto_passwd -b "$data/passwd" hw-collector "$HW_MQTT_COLLECTOR_PASSWORD"
fi
{
	cat "$config/acl"
	echo
	if [ -f "$data/gateways.acl" ]; then cat "$data/gateways.acl"; fi
} >"$data/acl.tmp"
mv "$data/acl.tmp" "$data/acl"

if [ ! -f "$certs/server.crt" ]; then
	# one name per word of HW_MQTT_TLS_NAMES: the splitting is intended
	# shellcheck disable=SC2086
	"$here/dev-certs.sh" "$certs" localhost 127.0.0.1 mosquitto ${HW_MQTT_TLS_NAMES:-}
	echo "entrypoint: made a DEVELOPMENT certificate for the TLS listener (8883); use one" \
		"from your own CA in production (docs/operations.md, Broker TLS)" >&2
fi

# The image's own entrypoint hands /mosquitto to the mosquitto user, then runs CMD.
exec "${HW_NEXT_ENTRYPOINT:-/docker-entrypoint.sh}" "$@"
