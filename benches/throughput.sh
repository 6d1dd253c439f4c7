#!/usr/bin/env bash
# Throughput and peak memory of `airlock process` on a generated lead list, against the CSV tools
# people use, all measured in one run, interleaved round by round:
#   xan count (SIMD parse only), xan fmt and xsv fmt (parse + write), Python's csv module (strict,
#   parse only), sha256sum (hash only), cat (copy: the I/O floor), and the engine in-process
#   without hashing (the worker's share of the work) on its plain-line path and on csv-core alone.
# Then: the stretch inputs (every cell quoted and multi-line; UTF-16), peak RSS at several sizes,
# and small files (1 KB) against xan fmt and /bin/true.
#
# Usage: bash benches/throughput.sh [SIZE_MB] [RUNS]
#   RSS_SIZES="20 200 1000"   input sizes (MiB) for peak RSS
#   SMALL_RUNS=200            runs per tool on the 1 KB file
#   AIRLOCK_BASELINE=PATH     another airlock binary (say, the previous commit) timed alongside
# Needs xan 0.61 and xsv 0.13: cargo install --locked xan@0.61.0 xsv@0.13.0
# Method and results: BENCHMARKS.md §13.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-200}
runs=${2:-5}
rss_sizes=${RSS_SIZES:-20 200 1000}
small_runs=${SMALL_RUNS:-200}
for tool in xan xsv sha256sum python3 bc; do
  command -v "$tool" > /dev/null || {
    echo "throughput.sh: $tool is not installed (xan, xsv: cargo install --locked xan@0.61.0 xsv@0.13.0)" >&2
    exit 1
  }
done
work=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
cargo bench -p airlock-engine --bench inprocess --no-run --quiet 2>/dev/null
inprocess=$(ls -t target/release/deps/inprocess-* | grep -v '\.d$' | head -1)
airlock=target/release/airlock

python3 benches/gen_leads.py "$work/leads.csv" "$size"
bytes=$(stat -c %s "$work/leads.csv")
echo "input: $bytes bytes ($size MiB), $(nproc) cores, $(uname -r), $(xan --version | head -1), $(xsv --version)"
cat "$work/leads.csv" > /dev/null # warm the page cache

# Wall seconds of one command, output discarded ($EPOCHREALTIME: no process of its own).
secs() {
  local t0=$EPOCHREALTIME
  "$@" > /dev/null 2>&1
  echo "scale=4; ($EPOCHREALTIME - $t0) / 1" | bc
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "scale=1; $1 / $2 / 1000000" | bc; }
ratio() { echo "scale=3; $1 / $2" | bc; }

# Interleaved rounds over the named tools; `run_round NAME` runs one tool on $input.
declare -A all
time_tools() {
  local input=$1
  shift
  all=()
  for _ in $(seq "$runs"); do
    for tool in "$@"; do
      all[$tool]+="$(secs run_tool "$tool" "$input") "
      rm -f "$work"/*.out
    done
  done
}
run_tool() {
  local tool=$1 input=$2
  case $tool in
    cat) cat "$input" > "$work/cat.out" ;;
    sha256sum) sha256sum "$input" ;;
    python) python3 -c "
import csv, sys
with open(sys.argv[1], newline='', encoding='utf-8') as f:
    for row in csv.reader(f, strict=True):
        pass
" "$input" ;;
    xan-count) xan count "$input" ;;
    xan-fmt) xan fmt "$input" -o "$work/xan.out" ;;
    xsv-fmt) xsv fmt "$input" -o "$work/xsv.out" ;;
    engine) "$inprocess" "$input" "$work/engine.out" --no-hash ;;
    engine-csv-core) "$inprocess" "$input" "$work/core.out" --no-hash --csv-core ;;
    airlock) "$airlock" process "$input" --output "$work/airlock.out" ;;
    baseline) "$AIRLOCK_BASELINE" process "$input" --output "$work/baseline.out" ;;
  esac
}
show() {
  local input_bytes=$1
  shift
  for tool in "$@"; do
    local m
    m=$(echo "${all[$tool]}" | median)
    printf '%-16s median %7.3f s  %7.1f MB/s   runs: %s\n' "$tool" "$m" "$(mbps "$input_bytes" "$m")" "${all[$tool]}"
  done
}
med() { echo "${all[$1]}" | median; }

echo
echo "== $size MiB lead list, $runs interleaved rounds"
tools="cat sha256sum python xan-count xan-fmt xsv-fmt engine engine-csv-core airlock"
[ -n "${AIRLOCK_BASELINE:-}" ] && tools="$tools baseline"
# shellcheck disable=SC2086
time_tools "$work/leads.csv" $tools
# shellcheck disable=SC2086
show "$bytes" $tools
echo "xan fmt / airlock time (goal >= 1.2): $(ratio "$(med xan-fmt)" "$(med airlock)")"
echo "xsv fmt / airlock time: $(ratio "$(med xsv-fmt)" "$(med airlock)")"
echo "csv-core path / plain-line path time, engine in-process: $(ratio "$(med engine-csv-core)" "$(med engine)")"
echo "airlock (sandboxed, parent hashing) / engine in-process time: $(ratio "$(med airlock)" "$(med engine)")"
if [ -n "${AIRLOCK_BASELINE:-}" ]; then
  echo "baseline / airlock time: $(ratio "$(med baseline)" "$(med airlock)")"
fi

# The same output, whichever path read it.
"$inprocess" "$work/leads.csv" "$work/a.csv" --no-hash > /dev/null
"$inprocess" "$work/leads.csv" "$work/b.csv" --no-hash --csv-core > /dev/null
cmp -s "$work/a.csv" "$work/b.csv" || { echo "the two parse paths wrote different outputs" >&2; exit 1; }
rm -f "$work/a.csv" "$work/b.csv"

echo
echo "== stretch inputs (a slice of the list, $runs rounds each)"
head -c $((bytes / 4)) "$work/leads.csv" | python3 -c "
import csv, sys
rows = csv.reader(sys.stdin.buffer.read().decode('utf-8', 'ignore').splitlines()[:-1])
w = csv.writer(open(sys.argv[1], 'w', newline='', encoding='utf-8'), quoting=csv.QUOTE_ALL, lineterminator='\n')
for i, r in enumerate(rows):
    w.writerow(r if i == 0 else [c + '\n' + str(i) for c in r])
" "$work/quoted.csv"
head -c $((bytes / 4)) "$work/leads.csv" | python3 -c "
import sys
text = sys.stdin.buffer.read().decode('utf-8', 'ignore')
text = text[:text.rfind('\n') + 1]
open(sys.argv[1], 'wb').write(b'\xff\xfe' + text.encode('utf-16-le'))
open(sys.argv[2], 'w', encoding='utf-8', newline='').write(text)
" "$work/utf16.csv" "$work/utf8.csv"
qbytes=$(stat -c %s "$work/quoted.csv")
time_tools "$work/quoted.csv" xan-fmt airlock
echo "every cell quoted and multi-line, $qbytes bytes:"
show "$qbytes" xan-fmt airlock
echo "xan fmt / airlock time (stretch goal >= 1.0): $(ratio "$(med xan-fmt)" "$(med airlock)")"
declare -A utf
time_tools "$work/utf8.csv" xan-fmt
utf[xan]=$(med xan-fmt)
time_tools "$work/utf16.csv" airlock
utf[airlock]=$(med airlock)
echo "UTF-16 input, $(stat -c %s "$work/utf16.csv") bytes (xan fmt reads UTF-8 only: it gets the same text as UTF-8, $(stat -c %s "$work/utf8.csv") bytes):"
echo "xan fmt (UTF-8) ${utf[xan]} s, airlock (UTF-16) ${utf[airlock]} s; xan / airlock time (stretch goal >= 1.0): $(ratio "${utf[xan]}" "${utf[airlock]}")"
rm -f "$work/quoted.csv" "$work/utf16.csv" "$work/utf8.csv"

echo
echo "== peak RSS (GNU time %M: the larger of airlock and its worker)"
for s in $rss_sizes; do
  if [ "$s" = "$size" ]; then
    f=$work/leads.csv
  else
    f=$work/rss.csv
    python3 benches/gen_leads.py "$f" "$s"
  fi
  /usr/bin/time -f %M -o "$work/rss" "$airlock" process "$f" --output "$work/o.out" > /dev/null
  echo "$s MiB ($(stat -c %s "$f") bytes): $(cat "$work/rss") KiB"
  rm -f "$work/rss.csv" "$work/o.out"
done

echo
echo "== small files: a 1 KB list, $small_runs runs each, in interleaved batches of 10"
head -c 1024 "$work/leads.csv" | python3 -c "
import sys
t = sys.stdin.buffer.read().decode('utf-8', 'ignore')
open(sys.argv[1], 'w', encoding='utf-8', newline='').write(t[:t.rfind('\n') + 1])
" "$work/small.csv"
# Ten runs of one tool on the small file, as seconds per run.
batch() {
  local t0=$EPOCHREALTIME
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    case $1 in
      true) /bin/true ;;
      xan-fmt) xan fmt "$work/small.csv" -o "$work/xan.out" ;;
      airlock) "$airlock" process "$work/small.csv" --output "$work/airlock.out" > /dev/null 2>&1 ;;
    esac
    rm -f "$work"/*.out
  done
  echo "scale=5; ($EPOCHREALTIME - $t0) / 10" | bc
}
declare -A small
for _ in $(seq $((small_runs / 10))); do
  for t in true xan-fmt airlock; do
    small[$t]+="$(batch $t) "
  done
done
for t in true xan-fmt airlock; do
  printf '%-8s median %.5f s per file\n' "$t" "$(echo "${small[$t]}" | median)"
done
m_true=$(echo "${small[true]}" | median)
m_xan=$(echo "${small[xan-fmt]}" | median)
m_air=$(echo "${small[airlock]}" | median)
echo "airlock / xan fmt time: $(ratio "$m_air" "$m_xan"); airlock / /bin/true time: $(ratio "$m_air" "$m_true")"
# Spawn plus lockdown alone, against /bin/true: the sandbox crate's own benchmark.
cargo bench --quiet -p airlock-sandbox --bench spawn -- 200 2> /dev/null | tail -4
