#!/usr/bin/env bash
# End-to-end throughput on loopback: Postfix's smtp-source as the mailer, smtp-sink as
# the provider. Two comparisons, chosen with MODE:
#
# MODE=passthrough (default) measures, in the same run,
#   direct:  smtp-source -> smtp-sink
#   relayed: smtp-source -> mailvalve (passthrough, release build) -> smtp-sink
# and prints both rates and their ratio. DESIGN.md's target: relayed >= 0.8 x direct.
# In passthrough the mailer gets 250 only after the provider said 250, so smtp-source
# finishing means every message has arrived: its wall time is the measurement.
#
# MODE=queue measures, in the same run,
#   queue:   smtp-source -> mailvalve (mode = "queue", release build) -> smtp-sink
#   postfix: smtp-source -> a private Postfix relaying to smtp-sink (needs root)
# and prints both rates and the ratio mailvalve/Postfix. DESIGN.md's target: >= 1.2.
# Both relays answer 250 once a message is on disk and deliver later, so smtp-source
# finishing proves nothing: the time is from the first submission until the sink has
# the last message. The sink runs with `-M N`, which in Postfix 3.7 makes it exit(0)
# right after reading the end of data of its Nth message (before replying to it), and
# with `-c`, whose counter gives progress for the warm-up and for error messages.
# Counting `-d` dump files would be wrong: a file is created at MAIL FROM, so the count
# includes transactions still in progress. Caveats: the Nth message gets no reply (the
# relay keeps it queued; it has arrived all the same), and -M counts end-of-data, so
# a message a relay delivered twice would be counted twice.
#
# Knobs (environment): MODE (passthrough), SESSIONS (20), MESSAGES (5000), SIZE (10240
# bytes of body), WARMUP (200 messages per path, not measured), EXTRA_UPSTREAM (TOML
# lines added to [upstream]), EXTRA_QUEUE (TOML lines added to [queue], queue mode),
# RUN_TIMEOUT (900 s per measured run), MAILVALVE_BIN (binary to measure; default
# target/release/mailvalve), ENFORCE=1 (exit 1 when the ratio is below the target).
# Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

MODE=${MODE:-passthrough}
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-5000}
SIZE=${SIZE:-10240}
WARMUP=${WARMUP:-200}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

case "$MODE" in
passthrough)
    TARGET=0.8
    need_tools smtp-sink smtp-source
    ;;
queue)
    TARGET=1.2
    need_tools smtp-sink smtp-source postfix
    if [ "$(id -u)" != 0 ]; then
        echo "MODE=queue starts a private Postfix, which needs root" >&2
        exit 2
    fi
    ;;
*)
    echo "MODE must be passthrough or queue, not '$MODE'" >&2
    exit 2
    ;;
esac

build_release

work=$(mktemp -d /tmp/mailvalve-bench.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM

start_sink() { # port
    smtp-sink "${sink_user[@]}" "127.0.0.1:$1" 1024 >"$work/sink-$1.log" 2>&1 &
    pids+=($!)
    wait_port "$1" $!
}

# Sends N messages to the port and prints the elapsed seconds.
send() { # port count
    local t0 t1
    t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" smtp-source -s "$SESSIONS" -m "$2" -l "$SIZE" -M bench.test \
        -f sender@example.org -t rcpt@example.net "127.0.0.1:$1" >"$work/source.log" 2>&1 || {
        echo "smtp-source to port $1 failed:" >&2
        cat "$work/source.log" >&2
        return 1
    }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# ------------------------------------------------------------------------------------
# MODE=passthrough
# ------------------------------------------------------------------------------------

passthrough_bench() {
    local direct_port relay_sink_port relay_port direct_s relay_s direct_rate relay_rate ratio
    direct_port=$(free_port)
    start_sink "$direct_port"
    relay_sink_port=$(free_port)
    start_sink "$relay_sink_port"

    relay_port=$(free_port)
    write_config "$work/mailvalve.toml" passthrough "$relay_port" "$relay_sink_port"
    start_mailvalve "$work/mailvalve.toml" "$relay_port" passthrough
    local log="$work/mailvalve-passthrough.log"

    echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS sessions ($(nproc) CPUs)"
    if [ "$WARMUP" -gt 0 ]; then
        send "$direct_port" "$WARMUP" >/dev/null
        send "$relay_port" "$WARMUP" >/dev/null || {
            cat "$log" >&2
            exit 1
        }
    fi
    direct_s=$(send "$direct_port" "$MESSAGES")
    relay_s=$(send "$relay_port" "$MESSAGES") || {
        tail -50 "$log" >&2
        exit 1
    }

    direct_rate=$(rate "$MESSAGES" "$direct_s")
    relay_rate=$(rate "$MESSAGES" "$relay_s")
    ratio=$(awk -v r="$relay_s" -v d="$direct_s" 'BEGIN { printf "%.2f", d / r }')
    printf 'direct  smtp-source -> smtp-sink:             %8s msgs/s  (%ss)\n' "$direct_rate" "$direct_s"
    printf 'relayed smtp-source -> mailvalve -> smtp-sink: %8s msgs/s  (%ss)\n' "$relay_rate" "$relay_s"
    verdict "relayed/direct" "$ratio"
}

verdict() { # label ratio
    if awk -v r="$2" -v t="$TARGET" 'BEGIN { exit !(r >= t) }'; then
        echo "ratio $1: $2 (target >= $TARGET): OK"
    else
        echo "ratio $1: $2 (target >= $TARGET): BELOW TARGET"
        if [ "${ENFORCE:-0}" = 1 ]; then
            exit 1
        fi
    fi
}

# ------------------------------------------------------------------------------------
# MODE=queue: store-and-forward relays, timed until the sink has everything
# ------------------------------------------------------------------------------------

# A sink that exits at the end of data of message N (-M) and keeps a counter (-c).
# Sets SINK_PID; its log is $work/sink-NAME.log.
start_counting_sink() { # port n name
    smtp-sink "${sink_user[@]}" -c -M "$2" "127.0.0.1:$1" 1024 >"$work/sink-$3.log" 2>&1 &
    SINK_PID=$!
    pids+=("$SINK_PID")
    wait_port "$1" "$SINK_PID"
}

# Messages the sink has received so far: the last `mesg=N` of its -c counter (it
# rewrites one \r-terminated line per event).
sink_count() { # name
    local n
    n=$(tail -c 300 "$work/sink-$1.log" 2>/dev/null | tr '\r' '\n' |
        sed -n 's/^.*mesg=\([0-9][0-9]*\).*$/\1/p' | tail -n 1)
    echo "${n:-0}"
}

# Waits (bounded) until the sink has received N messages; fails if the relay died.
wait_sink_count() { # name n timeout_s relay_pid
    local deadline=$((SECONDS + $3))
    while [ "$(sink_count "$1")" -lt "$2" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$1: sink has $(sink_count "$1") of $2 messages after $3 s" >&2
            return 1
        fi
        if ! alive "$4"; then
            echo "$1: relay (pid $4) died; the sink has $(sink_count "$1") of $2" >&2
            return 1
        fi
        sleep 0.05
    done
}

# One measured run through a relay: smtp-source sends MESSAGES to relay_port, the clock
# stops when the sink (started with -M WARMUP+MESSAGES) exits. Bounded by RUN_TIMEOUT.
# Sets RUN_S (first submission -> sink has all) and SUBMIT_S (-> smtp-source done).
timed_run() { # name relay_port relay_pid
    local name=$1 src t0 t_src="" t1 deadline rc
    t0=$EPOCHREALTIME
    timeout "$RUN_TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M bench.test \
        -f sender@example.org -t rcpt@example.net "127.0.0.1:$2" >"$work/source-$name.log" 2>&1 &
    src=$!
    pids+=("$src")
    deadline=$((SECONDS + RUN_TIMEOUT))
    while alive "$SINK_PID"; do
        if [ -z "$t_src" ] && ! alive "$src"; then
            t_src=$EPOCHREALTIME
            rc=0
            wait "$src" || rc=$?
            if [ "$rc" != 0 ]; then
                echo "$name: smtp-source failed (exit $rc):" >&2
                cat "$work/source-$name.log" >&2
                return 1
            fi
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$name: after $RUN_TIMEOUT s the sink has $(sink_count "$name")" \
                "of $((WARMUP + MESSAGES)) messages (RUN_TIMEOUT)" >&2
            return 1
        fi
        if ! alive "$3"; then
            echo "$name: relay (pid $3) died; the sink has $(sink_count "$name")" >&2
            return 1
        fi
        sleep 0.01
    done
    t1=$EPOCHREALTIME
    rc=0
    wait "$SINK_PID" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "$name: smtp-sink exited with $rc, not after its last message:" >&2
        tail -c 2000 "$work/sink-$name.log" >&2
        return 1
    fi
    if [ -z "$t_src" ]; then
        # The sink has everything and smtp-source is still reading its last replies
        # (bounded by its `timeout`).
        rc=0
        wait "$src" || rc=$?
        t_src=$EPOCHREALTIME
        if [ "$rc" != 0 ]; then
            echo "$name: smtp-source failed (exit $rc):" >&2
            cat "$work/source-$name.log" >&2
            return 1
        fi
    fi
    RUN_S=$(elapsed "$t0" "$t1")
    SUBMIT_S=$(elapsed "$t0" "$t_src")
}

# Warm-up (WARMUP messages, waited for at the sink), then the measured run.
relay_bench() { # name relay_port relay_pid
    if [ "$WARMUP" -gt 0 ]; then
        send "$2" "$WARMUP" >/dev/null
        wait_sink_count "$1" "$WARMUP" 300 "$3"
    fi
    timed_run "$@"
}

# --- a private Postfix relay (benches/common.sh starts and stops it) -----------------

pf="" # its directory, once created

# Sets up and starts a Postfix in $work/postfix listening on port $1 and relaying
# everything to 127.0.0.1:$2. Durable as Postfix always is; concurrency at defaults.
start_postfix() { # listen_port relay_to_port
    pf="$work/postfix"
    pf_start "$pf" "$1" <<CF
myhostname = relay.bench
relayhost = [127.0.0.1]:$2
smtpd_relay_restrictions = permit_mynetworks, reject
CF
}

stop_postfix() { [ -z "$pf" ] || pf_stop "$pf"; }

queue_bench() {
    local sink_port relay_port mv mv_s pf_s
    echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS sessions ($(nproc) CPUs)," \
        "store-and-forward, timed until the sink has the last one"

    # mailvalve, mode = "queue"
    sink_port=$(free_port)
    start_counting_sink "$sink_port" $((WARMUP + MESSAGES)) queue
    relay_port=$(free_port)
    write_config "$work/mailvalve-queue.toml" queue "$relay_port" "$sink_port" "$work/spool"
    start_mailvalve "$work/mailvalve-queue.toml" "$relay_port" queue
    mv=$MV_PID
    fail_logs=("$work/mailvalve-queue.log")
    relay_bench queue "$relay_port" "$mv"
    mv_s=$RUN_S
    printf 'queue   smtp-source -> mailvalve (queue) -> smtp-sink: %8s msgs/s  (%ss; submitted in %ss)\n' \
        "$(rate "$MESSAGES" "$mv_s")" "$mv_s" "$SUBMIT_S"
    stop_pid "$mv" # it would keep retrying the message the sink never answered

    # Postfix as the relay
    sink_port=$(free_port)
    start_counting_sink "$sink_port" $((WARMUP + MESSAGES)) postfix
    relay_port=$(free_port)
    fail_logs=("$work/postfix/postfix.log")
    start_postfix "$relay_port" "$sink_port"
    relay_bench postfix "$relay_port" "$PF_PID"
    pf_s=$RUN_S
    printf 'postfix smtp-source -> Postfix relay -> smtp-sink:    %8s msgs/s  (%ss; submitted in %ss)\n' \
        "$(rate "$MESSAGES" "$pf_s")" "$pf_s" "$SUBMIT_S"
    stop_postfix
    fail_logs=()

    verdict "mailvalve/postfix" "$(awk -v m="$mv_s" -v p="$pf_s" 'BEGIN { printf "%.2f", p / m }')"
}

if [ "$MODE" = queue ]; then
    queue_bench
else
    passthrough_bench
fi
