#!/bin/sh
# A development CA and a server certificate for mosquitto's TLS listener (port 8883).
#
#   deploy/mosquitto/dev-certs.sh DIR [NAME ...]
#
# Writes DIR/ca.crt, DIR/ca.key, DIR/server.crt and DIR/server.key. Each NAME (default:
# localhost 127.0.0.1) goes into the server certificate's subjectAltName, as an IP address
# when it is one and as a DNS name otherwise: gateways verify the broker against ca.crt and
# must reach it under one of these names. Nothing is done when DIR/server.crt exists
# (delete the files to start over).
#
# For development, tests and trials only: ca.key sits beside the certificates. A production
# broker gets its certificate from the organisation's CA (docs/operations.md, "Broker TLS").
# The docker image's entrypoint runs this on first start; tests/test_gateway_cmd.py runs it
# to start a TLS broker.
set -eu

if [ $# -lt 1 ]; then
	echo "usage: $0 DIR [NAME ...]" >&2
	exit 2
fi
dir=$1
shift
[ $# -ge 1 ] || set -- localhost 127.0.0.1
if [ -f "$dir/server.crt" ]; then
	echo "$dir/server.crt exists; nothing done" >&2
	exit 0
fi
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }

san=""
for name in "$@"; do
	case $name in
		*:*) entry="IP:$name" ;;          # IPv6
		*[!0-9.]*) entry="DNS:$name" ;;   # not only digits and dots: a host name
		*) entry="IP:$name" ;;
	esac
	san="${san:+$san,}$entry"
done
days=${HW_CERT_DAYS:-825}   # the longest validity clients accept for a server certificate

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077

run() {   # openssl is chatty on stderr; show it only when it fails
	if ! "$@" 2>"$tmp/err"; then
		cat "$tmp/err" >&2
		exit 1
	fi
}

run openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$days" \
	-subj "/CN=hazardwatch development CA" \
	-addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectKeyIdentifier=hash" \
	-keyout "$dir/ca.key" -out "$dir/ca.crt"
run openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$1" \
	-keyout "$dir/server.key" -out "$tmp/server.csr"
cat >"$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
run openssl x509 -req -sha256 -days "$days" -in "$tmp/server.csr" \
	-CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
	-extfile "$tmp/server.ext" -out "$dir/server.crt"
chmod 0644 "$dir/ca.crt" "$dir/server.crt"
echo "wrote $dir/ca.crt (give it to gateways), $dir/server.crt and $dir/server.key for: $san" >&2
