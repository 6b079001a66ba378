#!/usr/bin/env bash
# Peak memory of mailvalve (release build) in queue mode with a long queue: DESIGN.md
# says memory stays flat with the queue length (bodies on disk, not in RAM).
#
# mailvalve runs with mode = "queue" and an upstream that refuses every connection (a
# loopback port nobody listens on), so everything it accepts stays queued. smtp-source
# submits FIRST messages, then the rest up to MESSAGES; after each part the script
# reads VmHWM (peak resident set) from /proc/<pid>/status. Reported: VmHWM at start,
# after FIRST and after MESSAGES (flat means the last two are close; the growth per
# queued message is printed), RssAnon/RssFile at the end, and the spool's size on disk.
#
# Knobs (environment): MESSAGES (100000), FIRST (10000), SESSIONS (20), SIZE (1024 bytes
# of body), RUN_TIMEOUT (1800 s per smtp-source run), EXTRA_UPSTREAM / EXTRA_QUEUE (TOML
# lines added to [upstream] / [queue]), MAILVALVE_BIN (default target/release/mailvalve),
# TMPDIR (where the work dir and spool go; default /tmp; the spool of 100 000 messages
# takes about 0.5 GB and should be on a real disk, not tmpfs).
# Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

MESSAGES=${MESSAGES:-100000}
FIRST=${FIRST:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}

if [ "$FIRST" -le 0 ] || [ "$FIRST" -ge "$MESSAGES" ]; then
    echo "need 0 < FIRST ($FIRST) < MESSAGES ($MESSAGES)" >&2
    exit 2
fi
need_tools smtp-source
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/mailvalve-rss.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM

spool="$work/spool"
closed_port=$(free_port) # nobody listens there: every delivery attempt is refused
relay_port=$(free_port)
write_config "$work/mailvalve.toml" queue "$relay_port" "$closed_port" "$spool"
start_mailvalve "$work/mailvalve.toml" "$relay_port" rss
fail_logs=("$work/mailvalve-rss.log")

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

# Submits N messages (bounded by RUN_TIMEOUT); fails on any smtp-source error (e.g. a
# 4xx: mailvalve must keep accepting while the upstream is down) or if mailvalve died.
submit() { # count
    local t0 s
    t0=$EPOCHREALTIME
    timeout "$RUN_TIMEOUT" smtp-source -s "$SESSIONS" -m "$1" -l "$SIZE" -M bench.test \
        -f sender@example.org -t rcpt@example.net "127.0.0.1:$relay_port" \
        >"$work/source.log" 2>&1 || {
        echo "smtp-source ($1 messages) failed or hit RUN_TIMEOUT ($RUN_TIMEOUT s):" >&2
        cat "$work/source.log" >&2
        return 1
    }
    alive "$MV_PID" || {
        echo "mailvalve died during the submission" >&2
        return 1
    }
    s=$(elapsed "$t0" "$EPOCHREALTIME")
    echo "   $1 messages queued in ${s}s ($(rate "$1" "$s") msgs/s)"
}

echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS sessions ($(nproc) CPUs)," \
    "upstream refusing (127.0.0.1:$closed_port), spool $spool"
hwm_start=$(status_kb VmHWM)
submit "$FIRST"
hwm_first=$(status_kb VmHWM)
submit $((MESSAGES - FIRST))
hwm_end=$(status_kb VmHWM)
rss_anon=$(status_kb RssAnon)
rss_file=$(status_kb RssFile)

spool_kb=$(du -sk "$spool" | cut -f1)
printf 'VmHWM at start:              %10s\n' "$(mib "$hwm_start")"
printf 'VmHWM after %7d queued:  %10s\n' "$FIRST" "$(mib "$hwm_first")"
printf 'VmHWM after %7d queued:  %10s\n' "$MESSAGES" "$(mib "$hwm_end")"
printf 'growth per queued message:   %10s bytes (from %d to %d)\n' \
    "$(awk -v a="$hwm_first" -v b="$hwm_end" -v n=$((MESSAGES - FIRST)) \
        'BEGIN { printf "%.0f", (b - a) * 1024 / n }')" "$FIRST" "$MESSAGES"
printf 'at the end: RssAnon %s, RssFile %s\n' "$(mib "$rss_anon")" "$(mib "$rss_file")"
printf 'spool on disk:               %10s (%s)\n' "$(mib "$spool_kb")" "$spool"
# The spool keeps one body file per message in msg/ (src/queue/spool.rs); if that
# layout changes this count is skipped rather than wrong.
if [ -d "$spool/msg" ]; then
    bodies=$(find "$spool/msg" -type f | wc -l)
    echo "bodies in spool/msg:         $bodies"
    if [ "$bodies" != "$MESSAGES" ]; then
        echo "WARNING: expected $MESSAGES queued bodies; is the upstream really refusing?" >&2
    fi
fi
