#!/usr/bin/env bash
# Throughput and peak memory of `airlock process` on a generated lead list, measured in one run
# against `cat` (copy to a file), Python's csv module (strict, full parse) and the engine
# in-process (no worker, no sandbox). Usage: bash benches/throughput.sh [SIZE_MB] [RUNS]
# With AIRLOCK_BASELINE=/path/to/another/airlock (say, a build of the previous commit), that binary
# is measured in the same interleaved rounds and the ratio printed. Method and results:
# BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-200}
runs=${2:-5}
work=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
cargo bench -p airlock-engine --bench inprocess --no-run --quiet 2>/dev/null
inprocess=$(ls -t target/release/deps/inprocess-* | grep -v '\.d$' | head -1)

python3 benches/gen_leads.py "$work/leads.csv" "$size"
python3 benches/gen_leads.py "$work/small.csv" 20
bytes=$(stat -c %s "$work/leads.csv")
echo "input: $bytes bytes ($size MiB), $(nproc) cores, $(uname -r)"
cat "$work/leads.csv" > /dev/null   # warm the page cache

secs() { /usr/bin/time -f %e -o "$work/t" "$@" > /dev/null 2>&1; cat "$work/t"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A all
for i in $(seq "$runs"); do
  # Interleaved, so noise on this 2-core machine hits every tool alike.
  all[cat]+="$(secs sh -c "cat '$work/leads.csv' > '$work/cat.out'") "
  all[python]+="$(secs python3 -c "
import csv, sys
n = 0
with open(sys.argv[1], newline='', encoding='utf-8') as f:
    for row in csv.reader(f, strict=True):
        n += 1
" "$work/leads.csv") "
  all[inprocess]+="$(secs "$inprocess" "$work/leads.csv" "$work/inproc.out") "
  all[airlock]+="$(secs target/release/airlock process "$work/leads.csv" --output "$work/airlock.out") "
  if [ -n "${AIRLOCK_BASELINE:-}" ]; then
    all[baseline]+="$(secs "$AIRLOCK_BASELINE" process "$work/leads.csv" --output "$work/baseline.out") "
  fi
  rm -f "$work"/*.out
done
tools="cat python inprocess airlock"
[ -n "${AIRLOCK_BASELINE:-}" ] && tools="$tools baseline"
for tool in $tools; do
  m=$(echo ${all[$tool]} | tr ' ' '\n' | median)
  printf '%-10s median %6.3f s  %7.1f MB/s   runs: %s\n' "$tool" "$m" "$(echo "$bytes / $m / 1000000" | bc -l)" "${all[$tool]}"
done
a=$(echo ${all[airlock]} | tr ' ' '\n' | median)
p=$(echo ${all[inprocess]} | tr ' ' '\n' | median)
echo "airlock (sandboxed worker) / engine in-process time: $(echo "$a / $p" | bc -l | cut -c1-5)"
if [ -n "${AIRLOCK_BASELINE:-}" ]; then
  b=$(echo ${all[baseline]} | tr ' ' '\n' | median)
  echo "airlock / baseline time: $(echo "$a / $b" | bc -l | cut -c1-5)"
fi

for f in small leads; do
  /usr/bin/time -f %M -o "$work/rss" target/release/airlock process "$work/$f.csv" --output "$work/o.csv" > /dev/null
  echo "peak RSS ($f, $(stat -c %s "$work/$f.csv") bytes): $(cat "$work/rss") KiB (max over airlock and its worker)"
done
