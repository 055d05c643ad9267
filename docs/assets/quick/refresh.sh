#!/usr/bin/env bash
# Regenerate the quick-suite outputs shown in the docs (Getting started, Read the report):
# runs `subsetlab run` (the packaged quick suite) in a scratch directory and copies here its
# console output split around the report table (console-head.txt, report-table.md,
# console-tail.txt) and two of its plots. Run with subsetlab installed:
#   bash docs/assets/quick/refresh.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && subsetlab run --progress lines) > "$scratch/console.txt" 2>&1
# the console output before the table, the table (lines starting with '|'), and after it
awk '/^\|/ {exit} {print}' "$scratch/console.txt" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$here/console-head.txt"
grep '^|' "$scratch/console.txt" > "$here/report-table.md"
awk 'seen && !/^\|/ {print} /^\|/ {seen=1}' "$scratch/console.txt" | sed '/./,$!d' > "$here/console-tail.txt"
cp "$scratch/runs/quick/accuracy_vs_epoch.png" "$scratch/runs/quick/time_breakdown.png" "$here/"
echo "updated $here"
