#!/usr/bin/env bash
# Runs every Go fuzz target of both modules for a while each:
#   test/fuzz.sh [-o FILE] [-r REGEX] [FUZZTIME]
#     FUZZTIME  per target (default 5s; make test uses 3s, make fuzz 60s)
#     -o FILE   also write the summary as TSV (or set FUZZ_SUMMARY=FILE)
#     -r REGEX  only the targets whose name matches (grep -E)
#   FUZZ_PARALLEL  fuzzing workers per target (default 1: the machine is shared)
#   FUZZ_JOBS      targets fuzzed at once (default 1; make test uses 2)
# At the end it prints a table per target: executions, new interesting
# inputs, corpus size, result. A crasher is written to the package's
# testdata/fuzz/ by go test; commit it with the fix so it stays a
# regression test.
#
# Go 1.26's coordinator can fail a run that found nothing with "context
# deadline exceeded" when -fuzztime ends under load (golang/go#75804,
# fixed in Go 1.27). Such a run wrote no failing input; it is reported
# as "flake" and does not fail the script. Any other failure does.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${FUZZ_SUMMARY:-}"
only=""
while getopts "o:r:" opt; do
	case $opt in
	o) out="$OPTARG" ;;
	r) only="$OPTARG" ;;
	*)
		echo "usage: test/fuzz.sh [-o FILE] [-r REGEX] [FUZZTIME]" >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
t="${1:-5s}"
par="${FUZZ_PARALLEL:-1}"

tmp=$(mktemp -d -t anka-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# run_one MOD PKG NAME I: one target; its summary row goes to $tmp/I.row,
# its output to $tmp/I.log, and $tmp/I.fail exists if it failed.
run_one() {
	local mod=$1 pkg=$2 name=$3 i=$4 log="$tmp/$4.log" start status=ok
	start=$(date +%s)
	if ! (cd "$mod" && go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" -fuzzminimizetime 5s \
		-parallel "$par" "$pkg" >"$log" 2>&1); then
		if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			status=flake
		else
			status=FAIL
			touch "$tmp/$i.fail"
		fi
	fi
	local secs=$(($(date +%s) - start)) last execs newi total crasher
	# The last progress line: "fuzz: elapsed: 5s, execs: 12345 (2469/sec),
	# new interesting: 3 (total: 20)". None when the time went on the
	# baseline run over the corpus cached in GOCACHE.
	last=$(grep -E '^fuzz: elapsed: .*execs: [0-9]+' "$log" | tail -1 || true)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	newi=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	total=$(sed -nE 's/.*\(total: ([0-9]+)\).*/\1/p' <<<"$last")
	crasher=$(sed -nE 's/.*Failing input written to (.*)$/\1/p' "$log" | tail -1)
	if [[ -n "$crasher" ]]; then
		crasher="${mod#.}${mod:+/}${pkg#./}/${crasher}"
		crasher="${crasher#/}"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "${mod}/${pkg#./}" "${execs:-0}" "${newi:-0}" \
		"${total:-0}" "$secs" "$status" "${crasher:--}" >"$tmp/$i.row"
	echo "fuzz $mod $pkg $name ($t): $status, ${execs:-0} execs in ${secs}s"
	if [[ $status == FAIL ]]; then
		tail -20 "$log"
	fi
}

jobs_max="${FUZZ_JOBS:-1}"
i=0
for mod in . sdk; do
	while IFS=: read -r file name; do
		[[ -n "$only" && ! "$name" =~ $only ]] && continue
		i=$((i + 1))
		while (($(jobs -rp | wc -l) >= jobs_max)); do
			wait -n || true
		done
		run_one "$mod" "./$(dirname "${file#./}")" "$name" "$i" &
	done < <(cd "$mod" && grep -rHo --include='*_test.go' -E '^func (Fuzz[A-Za-z0-9_]+)' . |
		sed -E 's/func //' | grep -v '^./sdk/' | sort -u)
done
wait
targets=$i
fail=0
compgen -G "$tmp/*.fail" >/dev/null && fail=1
rows="$tmp/rows"
for ((n = 1; n <= targets; n++)); do
	cat "$tmp/$n.row" 2>/dev/null || true
done >"$rows"

header=$'target\tpackage\texecs\tnew_interesting\tcorpus\tseconds\tresult\tcrasher'
echo
{
	echo "$header"
	cat "$rows"
} | column -t -s $'\t'
sum=$(awk -F'\t' '{e += $3} END {print e + 0}' "$rows")
flakes=$(awk -F'\t' '$7 == "flake" {n++} END {print n + 0}' "$rows")
echo "$targets targets, $sum executions in all, $flakes flaked (golang/go#75804), fuzztime $t each"
if [[ -n "$out" ]]; then
	{
		echo "$header"
		cat "$rows"
	} >"$out"
	echo "summary written to $out"
fi
exit $fail
