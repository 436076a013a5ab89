#!/bin/sh
# Ansible dynamic inventory from the iir spec: `iir export inventory --list` / `--host NAME`.
# The spec is $IIR_SPEC (default: iir.yaml at the repository root); `iir` is taken from
# $IIR_BIN, else the repository's .venv, else PATH.
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
spec=${IIR_SPEC:-$root/iir.yaml}
if [ -n "$IIR_BIN" ]; then iir=$IIR_BIN
elif [ -x "$root/.venv/bin/iir" ]; then iir=$root/.venv/bin/iir
else iir=iir; fi
exec "$iir" export inventory --spec "$spec" "$@"
