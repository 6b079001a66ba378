#!/usr/bin/env bash
# Peak memory of mailvalve (release build) while many mailers send large messages at
# once (issue 8.4): by default 200 sessions each sending one 25 MiB message at the same
# time, in queue mode and in passthrough.
#
# - queue mode: DATA is streamed into the spool file as it arrives, so memory must not
#   grow with sessions x message size. The upstream refuses every connection (a
#   loopback port nobody listens on), so every message must end up in the spool.
#   `queue-held`: the same with delivery paused by the operator (`mailvalve queue
#   pause`), so only taking messages in is measured; in `queue` the delivery engine also
#   tries to send (it reads a message whole for each attempt, at most one per upstream
#   connection, CONNECTIONS).
# - passthrough: each message is held whole until its end (so a bad one is refused
#   before it is relayed), within server.passthrough_buffer for all sessions together
#   (BUFFER, default 256 MiB); a session that finds no room within
#   passthrough_buffer_wait (BUFFER_WAIT) gets 451 4.3.1 and the mailer retries later.
#   The provider is smtp-sink, reached over CONNECTIONS upstream connections.
#
# For each mode: VmHWM (peak resident set) of mailvalve from /proc/<pid>/status, the
# time, and how many messages were taken (queue: bodies in the spool; passthrough:
# messages smtp-sink received, and 451s the mailer got).
#
# Knobs (environment): SESSIONS (200), SIZE (26214400 bytes of body per message),
# MODES ("queue-held queue passthrough"), BUFFER (268435456), BUFFER_WAIT (30s), CONNECTIONS (4),
# RUN_TIMEOUT (900 s per smtp-source run), BUFFER_KEYS (1; 0 leaves the passthrough_buffer
# keys out of the config, to measure a build from before they existed), MAILVALVE_BIN (default
# target/release/mailvalve), TMPDIR (where the work dir and spool go: SESSIONS x SIZE
# on disk in queue mode, 5 GiB by default; use a real disk, not tmpfs, whose pages
# would count as memory).
# Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

SESSIONS=${SESSIONS:-200}
SIZE=${SIZE:-26214400}
MODES=${MODES:-queue-held queue passthrough}
BUFFER=${BUFFER:-268435456}
BUFFER_WAIT=${BUFFER_WAIT:-30s}
CONNECTIONS=${CONNECTIONS:-4}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

need_tools smtp-source smtp-sink
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/mailvalve-big.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM

# Room for the message and smtp-source's few header lines.
max_size=$((SIZE + 64 * 1024))
if [ "$BUFFER" -lt "$max_size" ]; then
    BUFFER=$max_size
fi

buffer_keys=""
if [ "${BUFFER_KEYS:-1}" != 0 ]; then
    buffer_keys="passthrough_buffer = $BUFFER
passthrough_buffer_wait = \"$BUFFER_WAIT\""
fi

config() { # file mode listen_port upstream_port spool
    cat >"$1" <<TOML
mode = "$2"

[server]
listen = "127.0.0.1:$3"
hostname = "mailvalve.bench"
max_message_size = $max_size
max_sessions = $((SESSIONS + 10))
$buffer_keys

[http]
listen = ""

[upstream]
host = "127.0.0.1"
port = $4
tls = "none"
profile = "local"
max_connections = $CONNECTIONS
admission_wait = "600s"

[queue]
dir = "$5"
TOML
}

status_kb() { # field of /proc/<mailvalve>/status, in kB
    local v
    v=$(sed -n "s/^$1:[[:space:]]*\([0-9][0-9]*\) kB\$/\1/p" "/proc/$MV_PID/status")
    [ -n "$v" ] || {
        echo "no $1 in /proc/$MV_PID/status (mailvalve gone?)" >&2
        return 1
    }
    echo "$v"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# All SESSIONS messages at once: one per session. -A: a 4xx does not stop smtp-source
# (passthrough may answer 451 4.3.1 when the buffer has no room).
submit() { # port log
    timeout "$RUN_TIMEOUT" smtp-source -A -s "$SESSIONS" -m "$SESSIONS" -l "$SIZE" \
        -M bench.test -f sender@example.org -t rcpt@example.net "127.0.0.1:$1" \
        >"$2" 2>&1 || {
        echo "smtp-source failed or hit RUN_TIMEOUT ($RUN_TIMEOUT s):" >&2
        tail -n 20 "$2" >&2
        return 1
    }
}

echo "== $SESSIONS sessions x one message of $SIZE bytes at once ($(nproc) CPUs);" \
    "passthrough buffer $BUFFER bytes, wait $BUFFER_WAIT, $CONNECTIONS upstream connections"

for mode in $MODES; do
    spool="$work/spool-$mode"
    relay_port=$(free_port)
    case $mode in
    queue | queue-held)
        up_port=$(free_port) # nobody listens: everything stays queued
        ;;
    passthrough)
        up_port=$(free_port)
        smtp-sink "${sink_user[@]}" -c "127.0.0.1:$up_port" 1024 >"$work/sink.log" 2>&1 &
        sink_pid=$!
        pids+=("$sink_pid")
        wait_port "$up_port" "$sink_pid"
        ;;
    *)
        echo "unknown mode $mode" >&2
        exit 2
        ;;
    esac
    config "$work/$mode.toml" "${mode%-held}" "$relay_port" "$up_port" "$spool"
    start_mailvalve "$work/$mode.toml" "$relay_port" "$mode"
    fail_logs=("$work/mailvalve-$mode.log" "$work/source-$mode.log" "$work/pause.log")
    if [ "$mode" = queue-held ]; then
        # Over the control socket of the running instance.
        (cd "$work" && timeout 30 "$BIN" queue -c "$work/$mode.toml" pause) >"$work/pause.log" 2>&1
    fi
    hwm_start=$(status_kb VmHWM)
    t0=$EPOCHREALTIME
    submit "$relay_port" "$work/source-$mode.log"
    secs=$(elapsed "$t0" "$EPOCHREALTIME")
    alive "$MV_PID" || {
        echo "mailvalve died during the run" >&2
        exit 1
    }
    hwm=$(status_kb VmHWM)
    anon=$(status_kb RssAnon)
    file=$(status_kb RssFile)
    threads=$(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$MV_PID/status")
    refused=$(grep -c '451 4\.3\.1' "$work/source-$mode.log" || true)
    case $mode in
    queue | queue-held)
        taken=$(find "$spool/msg" -type f | wc -l)
        spool_kb=$(du -sk "$spool" | cut -f1)
        what="$taken of $SESSIONS in the spool ($(mib "$spool_kb") on disk)"
        ;;
    passthrough)
        # smtp-sink -c: "sess=N quit=N mesg=N", updated in place (CR).
        taken=$(tr '\r' '\n' <"$work/sink.log" | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1)
        taken=${taken:-0}
        what="$taken of $SESSIONS received by smtp-sink, $refused refused 451 4.3.1"
        stop_pid "$sink_pid"
        ;;
    esac
    printf '%-12s VmHWM %10s (at start %s), %ss; %s\n' \
        "$mode:" "$(mib "$hwm")" "$(mib "$hwm_start")" "$secs" "$what"
    printf '%-12s at the end: RssAnon %s, RssFile %s, %s threads\n' \
        "" "$(mib "$anon")" "$(mib "$file")" "$threads"
    stop_pid "$MV_PID"
    rm -rf "$spool"
done
