#!/usr/bin/env bash
# Runs every Go fuzz target of both modules for a while each:
#   test/fuzz.sh [FUZZTIME]     (default 5s; make test uses 5s, make fuzz 60s)
# A crasher is written to the package's testdata/fuzz/ by go test; commit
# it with the fix so it stays a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-5s}"
fail=0
for mod in . sdk; do
	while IFS=: read -r file name; do
		pkg="./$(dirname "${file#./}")"
		echo "fuzz $mod $pkg $name ($t)"
		if ! (cd "$mod" && go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" -fuzzminimizetime 2s "$pkg" >/tmp/anka-fuzz.log 2>&1); then
			tail -20 /tmp/anka-fuzz.log
			fail=1
		fi
	done < <(cd "$mod" && grep -rHo --include='*_test.go' -E '^func (Fuzz[A-Za-z0-9_]+)' . | sed -E 's/func //' | grep -v '^./sdk/' | sort -u)
done
exit $fail
