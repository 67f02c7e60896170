#!/usr/bin/env bash
# fuzz.sh PKG NAME FUZZTIME: runs one fuzz target for FUZZTIME. A failure is a failure, with one exception: Go's
# fuzz coordinator (Go 1.26 and older, go.dev/issue/75804) may end a duration-bounded run with a bare "context
# deadline exceeded" at the deadline, on a loaded machine, when no input failed. Such a run (no failing input
# written, no panic) is run again, up to four runs in all; any other failure fails.
#
# Minimizing is bounded by FUZZMINIMIZETIME (default 2s; Go's is 60s). Go minimizes each new interesting input, not
# only a failing one, and its calls count as no execs: with Go's default, FuzzH1ClientAgreement's workers (100 to
# 300 ms an input) spent a 20 s run minimizing one input (68 execs, 0 new interesting; with 2s: 252 and 10), which
# read as stalls (0 execs/s) and met the deadline race above. A failing input is still written, minimized for as long.
set -uo pipefail
pkg=$1 name=$2 fuzztime=$3
minimize=${FUZZMINIMIZETIME:-2s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for try in 1 2 3 4; do
	echo "fuzz $name ($pkg) for $fuzztime"
	if ${GO:-go} test -run='^$' -fuzz="^$name\$" -fuzztime="$fuzztime" -fuzzminimizetime="$minimize" "$pkg" 2>&1 | tee "$log"; then
		exit 0
	fi
	if [ "$try" -lt 4 ] && grep -q 'context deadline exceeded' "$log" &&
		! grep -qE 'Failing input written|panic:' "$log"; then
		echo "fuzz $name: the Go fuzz coordinator's deadline race (go.dev/issue/75804), no input failed: once more"
		continue
	fi
	exit 1
done
exit 1
