#!/usr/bin/env bash
# Small-job end-to-end throughput: N 10 KB lead files through PostgreSQL + the real S3 server
# (SeaweedFS, started here) with the sandbox on, drained by one `airlock supervise -c 2`.
# Breakdown, in the same run: the same files through `airlock process` one after another (worker
# spawn + lockdown + parse, no queue, no storage), and the submit phase.
# Usage: bash benches/service.sh [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-200}
work=$(mktemp -d /tmp/airlock-svc-bench.XXXXXX)
cleanup() { bash .ci/s3-server.sh stop "$work/s3" > /dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/airlock
bash .ci/s3-server.sh start "$work/s3" > /dev/null
source "$work/s3/env"
schema="bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $schema"
export AIRLOCK_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$schema"
export AIRLOCK_STORAGE_URL="s3://$AIRLOCK_TEST_S3_BUCKET" AWS_ENDPOINT_URL=$AIRLOCK_TEST_S3_ENDPOINT \
  AWS_ACCESS_KEY_ID=$AIRLOCK_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$AIRLOCK_TEST_S3_SECRET_KEY \
  AWS_REGION=us-east-1 AIRLOCK_S3_PATH_STYLE=true AIRLOCK_LOG=warn
python3 benches/gen_leads.py "$work/one.csv" 0.0095
mkdir -p "$work/files"
for i in $(seq "$jobs"); do cp "$work/one.csv" "$work/files/$i.csv"; done
echo "$jobs files of $(stat -c %s "$work/one.csv") bytes; $(nproc) cores"
t0=$(date +%s%N)
for f in "$work"/files/*.csv; do "$bin" process "$f" --output "$work/out.csv" > /dev/null; done
t1=$(date +%s%N)
"$bin" migrate > /dev/null
for f in "$work"/files/*.csv; do "$bin" submit --tenant "t$((RANDOM % 3))" "$f" > /dev/null; done
t2=$(date +%s%N)
"$bin" supervise --until-idle -c 2 > "$work/summary.json"
t3=$(date +%s%N)
ms() { echo $(( ($2 - $1) / 1000000 )); }
echo "airlock process x$jobs (sequential, reference): $(ms $t0 $t1) ms = $(( jobs * 1000 / ($(ms $t0 $t1) + 1) )) files/s"
echo "airlock submit  x$jobs (sequential CLI calls):  $(ms $t1 $t2) ms"
echo "airlock supervise -c 2 (claim, S3 get, worker, 3 S3 puts, complete): $(ms $t2 $t3) ms = $(( jobs * 1000 / ($(ms $t2 $t3) + 1) )) jobs/s"
cat "$work/summary.json"
psql -q -h 127.0.0.1 -U postgres -d test -c "SET client_min_messages = warning; DROP SCHEMA $schema CASCADE"
