#!/usr/bin/env bash
# End-to-end throughput on loopback: Postfix's smtp-source as the mailer, smtp-sink as
# the provider. Measures, in the same run,
#   direct:  smtp-source -> smtp-sink
#   relayed: smtp-source -> mailvalve (passthrough, release build) -> smtp-sink
# and prints both rates and their ratio. DESIGN.md's target: relayed >= 0.8 x direct.
#
# In passthrough the mailer gets 250 only after the provider said 250, so smtp-source
# finishing means every message has arrived: its wall time is the measurement.
#
# Knobs (environment): SESSIONS (20), MESSAGES (5000), SIZE (10240 bytes of body),
# WARMUP (200 messages per path, not measured), EXTRA_UPSTREAM (TOML lines added to
# [upstream]), MAILVALVE_BIN (binary to measure; default target/release/mailvalve),
# ENFORCE=1 (exit 1 when the ratio is below 0.8).
# Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-5000}
SIZE=${SIZE:-10240}
WARMUP=${WARMUP:-200}
TARGET=0.8
export PATH="$PATH:/usr/sbin:/sbin"

for t in smtp-sink smtp-source; do
    command -v "$t" >/dev/null || {
        echo "$t not installed (apt-get install postfix)" >&2
        exit 2
    }
done

echo "== cargo build --release"
cargo build --release --bin mailvalve
BIN=$(realpath "${MAILVALVE_BIN:-target/release/mailvalve}")

work=$(mktemp -d /tmp/mailvalve-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A loopback port nobody listens on (bounded number of tries).
free_port() {
    local p i
    for i in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Waits (at most 20 s) until something accepts on the port; fails if $2 (a pid) died.
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || {
            echo "process $2 exited before listening on $1" >&2
            return 1
        }
        sleep 0.1
    done
    echo "nothing listening on $1 after 20 s" >&2
    return 1
}

sink_user=()
if [ "$(id -u)" = 0 ]; then
    sink_user=(-u nobody) # smtp-sink refuses to run as root
fi

start_sink() { # port
    smtp-sink "${sink_user[@]}" "127.0.0.1:$1" 1024 >"$work/sink-$1.log" 2>&1 &
    pids+=($!)
    wait_port "$1" $!
}

# Sends N messages to the port and prints the elapsed seconds.
send() { # port count
    local t0 t1
    t0=$(date +%s.%N)
    timeout 900 smtp-source -s "$SESSIONS" -m "$2" -l "$SIZE" -M bench.test \
        -f sender@example.org -t rcpt@example.net "127.0.0.1:$1" >"$work/source.log" 2>&1 || {
        echo "smtp-source to port $1 failed:" >&2
        cat "$work/source.log" >&2
        return 1
    }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

direct_port=$(free_port)
start_sink "$direct_port"
relay_sink_port=$(free_port)
start_sink "$relay_sink_port"

relay_port=$(free_port)
cat >"$work/mailvalve.toml" <<TOML
mode = "passthrough"

[server]
listen = "127.0.0.1:$relay_port"
hostname = "mailvalve.bench"

[upstream]
host = "127.0.0.1"
port = $relay_sink_port
tls = "none"
profile = "local"
max_connections = $SESSIONS
max_messages_per_connection = 1000000
admission_wait = "60s"
${EXTRA_UPSTREAM:-}
TOML
(cd "$work" && RUST_LOG=${RUST_LOG:-warn} exec "$BIN" run -c "$work/mailvalve.toml") >"$work/mailvalve.log" 2>&1 &
pids+=($!)
wait_port "$relay_port" $! || {
    cat "$work/mailvalve.log" >&2
    exit 1
}

echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS sessions ($(nproc) CPUs)"
if [ "$WARMUP" -gt 0 ]; then
    send "$direct_port" "$WARMUP" >/dev/null
    send "$relay_port" "$WARMUP" >/dev/null || {
        cat "$work/mailvalve.log" >&2
        exit 1
    }
fi
direct_s=$(send "$direct_port" "$MESSAGES")
relay_s=$(send "$relay_port" "$MESSAGES") || {
    tail -50 "$work/mailvalve.log" >&2
    exit 1
}

direct_rate=$(rate "$MESSAGES" "$direct_s")
relay_rate=$(rate "$MESSAGES" "$relay_s")
ratio=$(awk -v r="$relay_s" -v d="$direct_s" 'BEGIN { printf "%.2f", d / r }')
printf 'direct  smtp-source -> smtp-sink:             %8s msgs/s  (%ss)\n' "$direct_rate" "$direct_s"
printf 'relayed smtp-source -> mailvalve -> smtp-sink: %8s msgs/s  (%ss)\n' "$relay_rate" "$relay_s"
if awk -v r="$ratio" -v t="$TARGET" 'BEGIN { exit !(r >= t) }'; then
    echo "ratio relayed/direct: $ratio (target >= $TARGET): OK"
else
    echo "ratio relayed/direct: $ratio (target >= $TARGET): BELOW TARGET"
    if [ "${ENFORCE:-0}" = 1 ]; then
        exit 1
    fi
fi
