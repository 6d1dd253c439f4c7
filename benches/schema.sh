#!/usr/bin/env bash
# `airlock process` with the 8-field lead schema (benches/leads.schema.json: email format, unique
# and required; a pattern; an enum; an integer minimum) against the same binary without a
# schema, on one generated lead list (benches/gen_leads.py … schema), in interleaved rounds; then
# frictionless-py's `validate` on a slice of the same file, with the same schema, against
# `airlock process --schema` on that slice. Usage: bash benches/schema.sh [SIZE_MB] [RUNS]
# [SLICE_MB]. frictionless comes from FRICTIONLESS (default: `frictionless` on PATH); without it
# that part is skipped, and says so. FRICTIONLESS_FULL=1 also times frictionless on the whole file
# (minutes), against the median of the `--schema` runs. Method and results: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-200}
runs=${2:-3}
slice=${3:-20}
frictionless=${FRICTIONLESS:-frictionless}
work=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
python3 benches/gen_leads.py "$work/leads.csv" "$size" schema
python3 benches/gen_leads.py "$work/slice.csv" "$slice" schema
bytes=$(stat -c %s "$work/leads.csv")
slice_bytes=$(stat -c %s "$work/slice.csv")
echo "input: $bytes bytes ($size MiB), $(nproc) cores, $(uname -r)"
cat "$work/leads.csv" > /dev/null

secs() { /usr/bin/time -f '%e %M' -o "$work/t" "$@" > "$work/stdout" 2> /dev/null || true; tail -1 "$work/t"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

plain="" schema="" rss=""
for _ in $(seq "$runs"); do
  read -r t _ < <(secs target/release/airlock process "$work/leads.csv" --output "$work/plain.out")
  plain+="$t "
  read -r t m < <(secs target/release/airlock process "$work/leads.csv" --schema benches/leads.schema.json --output "$work/schema.out")
  schema+="$t "
  rss+="$m "
done
jq -c '{status, rows, issue_counts}' "$work/stdout"
p=$(echo $plain | tr ' ' '\n' | median)
s=$(echo $schema | tr ' ' '\n' | median)
m=$(echo $rss | tr ' ' '\n' | sort -n | tail -1)
printf 'no schema   median %6.3f s  %7.1f MB/s   runs: %s\n' "$p" "$(echo "$bytes / $p / 1000000" | bc -l)" "$plain"
printf 'schema      median %6.3f s  %7.1f MB/s   runs: %s\n' "$s" "$(echo "$bytes / $s / 1000000" | bc -l)" "$schema"
printf 'schema / no-schema throughput: %.2f; peak RSS with the schema (parent and worker, GNU time %%M): %d KiB\n' "$(echo "$p / $s" | bc -l)" "$m"

if ! command -v "$frictionless" > /dev/null; then
  echo "frictionless-py not found (set FRICTIONLESS=/path/to/frictionless): its comparison is skipped"
  exit 0
fi
read -r a _ < <(secs target/release/airlock process "$work/slice.csv" --schema benches/leads.schema.json --output "$work/slice.out")
cp benches/leads.schema.json "$work/schema.json"
# frictionless refuses paths outside its working directory ("not safe").
read -r f _ < <(cd "$work" && secs "$frictionless" validate --json --limit-errors 100000000 --schema schema.json slice.csv)
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("frictionless:", "valid" if d["valid"] else "invalid", len(d["tasks"][0]["errors"]), "errors,", d["tasks"][0]["stats"].get("rows"), "rows")' "$work/stdout" || true
printf 'slice %d bytes: airlock --schema %.3f s (%.1f MB/s), frictionless validate %.3f s (%.2f MB/s): %.0fx\n' \
  "$slice_bytes" "$a" "$(echo "$slice_bytes / $a / 1000000" | bc -l)" "$f" "$(echo "$slice_bytes / $f / 1000000" | bc -l)" "$(echo "$f / $a" | bc -l)"
if [ "${FRICTIONLESS_FULL:-0}" = 1 ]; then
  read -r f _ < <(cd "$work" && secs "$frictionless" validate --json --limit-errors 100000000 --schema schema.json leads.csv)
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("frictionless:", "valid" if d["valid"] else "invalid", len(d["tasks"][0]["errors"]), "errors,", d["tasks"][0]["stats"].get("rows"), "rows")' "$work/stdout" || true
  printf 'whole file %d bytes: airlock --schema median %.3f s, frictionless validate %.3f s (%.2f MB/s): %.0fx\n' \
    "$bytes" "$s" "$f" "$(echo "$bytes / $f / 1000000" | bc -l)" "$(echo "$f / $s" | bc -l)"
fi
