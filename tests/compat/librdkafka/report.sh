#!/usr/bin/env bash
# Turn run.sh result files into the markdown sweep table of
# docs/compatibility.md:
#   report.sh SHALE_RESULTS.tsv [MOCK_RESULTS.tsv]
# (results.tsv is written by run.sh in its --log-dir: test, result, seconds,
# reason). The "cause" column starts as the failure message and is meant to be
# edited into a root cause by whoever reads the logs.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
shale="${1:?usage: report.sh SHALE_RESULTS.tsv [MOCK_RESULTS.tsv]}"; mock="${2:-}"
names() { # NUM -> comma list of the sub-test names run in the sweep
    awk '/^struct test tests\[\] = \{/{on=1} on{print} on && /^\};/{exit}' "$RDK_DIR/tests/test.c" |
        grep -oE "_TEST\( *${1}_[A-Za-z0-9_]+" | sed -E 's/_TEST\( *//' | grep -v '_local$\|_mock$' | paste -sd, - | sed 's/,/, /g'
}
res() { [ -n "$2" ] && awk -F'\t' -v t="$1" '$1==t{r=$2} END{print r}' "$2"; }
if [ -n "$mock" ]; then
    echo "| test | sub-tests | Shale | mock | Shale failure (first assertion) |"
    echo "|---|---|---|---|---|"
else
    echo "| test | sub-tests | Shale | Shale failure (first assertion) |"
    echo "|---|---|---|---|"
fi
awk -F'\t' '!seen[$1]++{print $1}' "$shale" | while read -r t; do
    r="$(res "$t" "$shale")"
    why="$(awk -F'\t' -v t="$t" '$1==t{w=$4} END{print w}' "$shale" | sed 's/|/\\|/g')"
    if [ -n "$mock" ]; then
        printf '| %s | %s | %s | %s | %s |\n' "$t" "$(names "$t")" "$r" "$(res "$t" "$mock")" "$why"
    else
        printf '| %s | %s | %s | %s |\n' "$t" "$(names "$t")" "$r" "$why"
    fi
done
