#!/bin/sh
# Build hw_identity.so next to this script if it is missing or older than its source,
# then print its absolute path (the only thing written to stdout).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
so="$here/hw_identity.so"

if [ ! -f "$so" ] || [ "$here/hw_identity.c" -nt "$so" ] || [ "$here/Makefile" -nt "$so" ]; then
	make -s -C "$here" -B hw_identity.so >&2
fi
echo "$so"
