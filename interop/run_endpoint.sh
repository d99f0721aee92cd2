#!/bin/bash
# The interop runner's entry point for the quiver endpoint image (and, outside Docker, for a local run:
# the simulator's /setup.sh and /wait-for-it.sh are skipped when absent).
#
# Everything the endpoint needs comes from the environment the runner sets (ROLE, TESTCASE, REQUESTS,
# SSLKEYLOGFILE, QLOGDIR, and locally WWW, DOWNLOADS, CERTS, LISTEN); it is passed through untouched.
# The binary is $QUIVER_INTEROP_BIN if set, else `quiver-interop` beside this script, else on PATH.
set -e

# Routes and interfaces of the network simulator's endpoint container.
if [ -x /setup.sh ]; then
    /setup.sh
fi

if [ "$ROLE" == "client" ] && [ -x /wait-for-it.sh ]; then
    # The simulator must be up before the client's first packet.
    /wait-for-it.sh sim:57832 -s -t 30
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "$QUIVER_INTEROP_BIN" ]; then
    binary="$QUIVER_INTEROP_BIN"
elif [ -x "$here/quiver-interop" ]; then
    binary="$here/quiver-interop"
else
    binary="quiver-interop"
fi

echo "quiver-interop: ROLE=$ROLE TESTCASE=$TESTCASE" >&2
exec "$binary"
