#!/usr/bin/env bash
# Against a limited provider: mailvalve (queue mode) and a Postfix relay, side by side,
# each sending the same campaign to the same provider — a private Postfix whose anvil
# accepts LIMIT messages per client per WINDOW seconds
# (`smtpd_client_message_rate_limit`, `anvil_rate_time_unit`; loopback not exempt)
# and answers `450 4.7.1 Error: too much mail from 127.0.0.1` above that. It delivers
# what it accepts to its `discard` transport.
#
#   mailvalve: smtp-source -> mailvalve (mode = "queue", release build) -> provider
#   postfix:   smtp-source -> a private Postfix relay (relayhost = provider) -> provider
#
# The two runs are one after the other (both connect from 127.0.0.1, so they would
# share anvil's counters), with WINDOW + 2 s between them so that the second starts in
# a fresh anvil unit; mailvalve is stopped before the Postfix run. Each run is timed
# from the first submission until the provider's log shows MESSAGES deliveries, and
# bounded by RUN_TIMEOUT: a run that did not finish prints how far it got. For each it
# prints delivered, elapsed, msgs/s, that rate as a share of LIMIT / (WINDOW + 1) —
# anvil's unit in effect lasts a second longer than configured (whole-second clock; see
# Scenario::limit_per_second in tests/interop_limits/scenario.rs) — and the refusals
# the provider logged ("Message delivery request rate limit exceeded").
# Deliveries are counted from the provider's log (`status=sent`); smtp-source's
# messages carry no Message-ID, so a message delivered twice would count twice (the
# interop test `tests/interop_limits.rs` checks exactly-once by Message-ID).
#
# Both relays run as a user would start them: mailvalve with PROFILE (default generic,
# what a user gets who picks no profile) and upstream.max_connections = SESSIONS;
# Postfix with its defaults (its queue manager retries a deferred message after
# minimal_backoff_time, 300 s).
#
# Knobs (environment): LIMIT (60), WINDOW (15 s), MESSAGES (600), SESSIONS (10), SIZE
# (2048 bytes), PROFILE (generic), EXTRA_UPSTREAM (TOML lines added to [upstream]),
# RUN_TIMEOUT (360 s per run), MAILVALVE_BIN (binary to measure; default
# target/release/mailvalve), ONLY (mailvalve or postfix: run one side). Needs root
# (private Postfix instances). Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

LIMIT=${LIMIT:-60}
WINDOW=${WINDOW:-15}
MESSAGES=${MESSAGES:-600}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-2048}
PROFILE=${PROFILE:-generic}
RUN_TIMEOUT=${RUN_TIMEOUT:-360}
ONLY=${ONLY:-}

need_tools smtp-source postfix
if [ "$(id -u)" != 0 ]; then
    echo "this bench starts private Postfix instances, which needs root" >&2
    exit 2
fi

build_release

work=$(mktemp -d /tmp/mailvalve-bench.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the limited provider -------------------------------------------------------------

provider_port=$(free_port)
provider="$work/provider"
pf_start "$provider" "$provider_port" <<CF
myhostname = provider.bench
default_transport = discard
smtpd_client_event_limit_exceptions =
anvil_rate_time_unit = ${WINDOW}s
smtpd_client_message_rate_limit = $LIMIT
default_process_limit = 100
CF
fail_logs=("$provider/postfix.log")

delivered_count() { grep -c ' status=sent ' "$provider/postfix.log" || true; }
refusal_count() { grep -c 'Message delivery request rate limit exceeded' "$provider/postfix.log" || true; }

# One campaign through the relay on PORT (process PID); prints its line of the table.
campaign() { # name port pid
    local name=$1 d0 r0 t0 t1 src d r deadline done_flag=yes
    d0=$(delivered_count)
    r0=$(refusal_count)
    t0=$EPOCHREALTIME
    timeout "$RUN_TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M bench.test \
        -f sender@example.org -t rcpt@example.net "127.0.0.1:$2" >"$work/source-$name.log" 2>&1 &
    src=$!
    pids+=("$src")
    deadline=$((SECONDS + RUN_TIMEOUT))
    while [ $(($(delivered_count) - d0)) -lt "$MESSAGES" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            done_flag=no
            break
        fi
        if ! alive "$3"; then
            echo "$name: relay (pid $3) died" >&2
            return 1
        fi
        sleep 0.2
    done
    t1=$EPOCHREALTIME
    if ! wait "$src"; then
        echo "$name: smtp-source failed:" >&2
        cat "$work/source-$name.log" >&2
        return 1
    fi
    d=$(($(delivered_count) - d0))
    r=$(($(refusal_count) - r0))
    awk -v name="$name" -v d="$d" -v n="$MESSAGES" -v s="$(elapsed "$t0" "$t1")" \
        -v l="$LIMIT" -v w="$WINDOW" -v r="$r" -v done="$done_flag" 'BEGIN {
        rate = d / s; share = 100 * rate / (l / (w + 1))
        printf "%-10s %5d/%-5d %9.1fs%s %8.2f %7.0f%% %9d (%.1f%%)\n", name, d, n, s,
            (done == "yes" ? " " : "+"), rate, share, r, 100 * r / n
    }'
}

echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS sessions ($(nproc) CPUs); provider:" \
    "$LIMIT messages per ${WINDOW} s, in effect per $((WINDOW + 1)) s (= $(awk -v l="$LIMIT" -v w="$WINDOW" 'BEGIN { printf "%.2f", l / (w + 1) }') msgs/s," \
    "the 100% of '% limit'); mailvalve profile $PROFILE; + = RUN_TIMEOUT ($RUN_TIMEOUT s) reached"
printf '%-10s %11s %11s %8s %8s %15s\n' relay delivered elapsed msgs/s "% limit" "refusals (%)"

if [ "$ONLY" != postfix ]; then
    relay_port=$(free_port)
    write_config "$work/mailvalve.toml" queue "$relay_port" "$provider_port" "$work/spool"
    start_mailvalve "$work/mailvalve.toml" "$relay_port" queue
    fail_logs+=("$work/mailvalve-queue.log")
    campaign mailvalve "$relay_port" "$MV_PID"
    stop_pid "$MV_PID"
fi

if [ -z "$ONLY" ]; then
    # A fresh anvil unit for the second relay.
    sleep $((WINDOW + 2))
fi

if [ "$ONLY" != mailvalve ]; then
    relay_port=$(free_port)
    pf_start "$work/relay" "$relay_port" <<CF
myhostname = relay.bench
relayhost = [127.0.0.1]:$provider_port
smtpd_relay_restrictions = permit_mynetworks, reject
CF
    fail_logs+=("$work/relay/postfix.log")
    campaign postfix "$relay_port" "$PF_PID"
    pf_stop "$work/relay"
fi
