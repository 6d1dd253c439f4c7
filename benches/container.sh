#!/usr/bin/env bash
# `airlock process` in the container image against the host binary, on the same generated lead
# list, in interleaved rounds: wall time of `podman run … process` (container start included) and
# of the host binary. Usage: bash benches/container.sh [SIZE_MB] [RUNS]. Needs the image built by
# .ci/container (localhost/airlock:ci) and CONTAINERS_CONF=.ci/containers.conf. Method and
# results: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-200}
runs=${2:-3}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/.ci/containers.conf}
image=${AIRLOCK_IMAGE:-localhost/airlock:ci}
work=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work"
python3 benches/gen_leads.py "$work/leads.csv" "$size"
chmod 0644 "$work/leads.csv"
bytes=$(stat -c %s "$work/leads.csv")
echo "input: $bytes bytes ($size MiB), $(nproc) cores, $(uname -r)"
cat "$work/leads.csv" > /dev/null
secs() { /usr/bin/time -f %e -o "$work/t" "$@" > /dev/null 2>&1; cat "$work/t"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run=(--rm --read-only --tmpfs /tmp --user 10001:10001 --cap-drop=all --security-opt=no-new-privileges
  --security-opt "seccomp=$PWD/policies/container-seccomp.json" --network=none -v "$work:/w")
host="" image_t="" start=""
for _ in $(seq "$runs"); do
  host+="$(secs target/release/airlock process "$work/leads.csv" --output "$work/host.out") "
  image_t+="$(secs podman run "${run[@]}" "$image" process /w/leads.csv --output /w/image.out) "
  start+="$(secs podman run "${run[@]}" "$image" --version) "
  cmp "$work/host.out" "$work/image.out"
  rm -f "$work"/*.out
done
h=$(echo $host | tr ' ' '\n' | median)
c=$(echo $image_t | tr ' ' '\n' | median)
s=$(echo $start | tr ' ' '\n' | median)
printf 'host      median %6.3f s  %7.1f MB/s   runs: %s\n' "$h" "$(echo "$bytes / $h / 1000000" | bc -l)" "$host"
printf 'image     median %6.3f s  %7.1f MB/s   runs: %s\n' "$c" "$(echo "$bytes / $c / 1000000" | bc -l)" "$image_t"
printf 'start     median %6.3f s (podman run of `airlock --version`: the container start alone)   runs: %s\n' "$s" "$start"
printf 'host / image throughput: %.2f\n' "$(echo "$h / $c" | bc -l)"
