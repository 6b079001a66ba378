# shellcheck shell=bash
# Helpers shared by the end-to-end bench scripts (sourced, not run). The sourcing script
# has `set -euo pipefail`, is in the repository root, and sets `work` (a temp dir) before
# starting anything. Every wait here is bounded; only 127.0.0.1 is ever contacted.

export PATH="$PATH:/usr/sbin:/sbin"
# $EPOCHREALTIME and awk must agree on the decimal point.
export LC_ALL=C

pids=()          # processes we started, stopped by cleanup()
cleanup_hooks=() # functions run by cleanup() before it stops those processes
fail_logs=()     # logs whose tail cleanup() shows when the script fails

need_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || {
            echo "$t not installed (apt-get install postfix)" >&2
            exit 2
        }
    done
}

# Builds the release binary and sets BIN. MAILVALVE_BIN overrides what is measured (and
# then nothing is built: e.g. a debug build for a bench whose figures a provider's limit
# decides, not the relay's speed).
build_release() {
    if [ -n "${MAILVALVE_BIN:-}" ]; then
        BIN=$(realpath "$MAILVALVE_BIN")
        echo "== measuring $BIN (MAILVALVE_BIN; not building)"
        return 0
    fi
    echo "== cargo build --release"
    cargo build --release --bin mailvalve
    BIN=$(realpath target/release/mailvalve)
}

# True while the process exists and is not a zombie (a child that exited but was not
# yet reaped still answers `kill -0`).
alive() { # pid
    local _pid _comm state
    [ -r "/proc/$1/stat" ] || return 1
    read -r _pid _comm state _ <"/proc/$1/stat" 2>/dev/null || return 1
    [ "$state" != Z ]
}

# SIGTERM, up to 10 s to exit, then SIGKILL; reaps it when it is our child.
stop_pid() { # pid
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive "$1" || break
        sleep 0.1
    done
    if alive "$1"; then
        echo "process $1 ignored SIGTERM for 10 s; killing it" >&2
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

# The EXIT trap: shows fail_logs on failure, runs the hooks, stops what we started,
# removes $work. Keeps the script's exit status.
cleanup() {
    local rc=$? h p
    set +e
    if [ "$rc" != 0 ] && [ "$rc" != 130 ]; then
        for p in "${fail_logs[@]}"; do
            if [ -s "$p" ]; then
                echo "--- last lines of $p" >&2
                tail -n 50 "$p" >&2
            fi
        done
    fi
    for h in "${cleanup_hooks[@]}"; do
        "$h"
    done
    for p in "${pids[@]}"; do
        stop_pid "$p"
    done
    if [ -n "${work:-}" ]; then
        rm -rf "$work"
    fi
}

# A loopback port nobody listens on (bounded number of tries).
free_port() {
    local p
    for _ in $(seq 1 100); do
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
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        alive "$2" || {
            echo "process $2 exited before listening on $1" >&2
            return 1
        }
        sleep 0.1
    done
    echo "nothing listening on $1 after 20 s" >&2
    return 1
}

# shellcheck disable=SC2034 # used by the sourcing scripts
sink_user=()
# shellcheck disable=SC2034
if [ "$(id -u)" = 0 ]; then
    sink_user=(-u nobody) # smtp-sink refuses to run as root
fi

# Writes a mailvalve config. MODE is passthrough or queue; SPOOL is the [queue] dir
# (queue mode only). EXTRA_UPSTREAM / EXTRA_QUEUE: TOML lines added to those tables;
# PROFILE: upstream.profile (default local).
write_config() { # file mode listen_port upstream_port [spool]
    {
        echo "mode = \"$2\""
        cat <<TOML

[server]
listen = "127.0.0.1:$3"
hostname = "mailvalve.bench"

[http]
listen = ""

[upstream]
host = "127.0.0.1"
port = $4
tls = "none"
profile = "${PROFILE:-local}"
max_connections = $SESSIONS
max_messages_per_connection = 1000000
admission_wait = "60s"
${EXTRA_UPSTREAM:-}
TOML
        if [ "$2" = queue ]; then
            cat <<TOML

[queue]
dir = "$5"
${EXTRA_QUEUE:-}
TOML
        fi
    } >"$1"
}

# Starts mailvalve on a config (log: $work/mailvalve-NAME.log), waits for its port and
# sets MV_PID. RUST_LOG (default warn) is passed through.
start_mailvalve() { # config listen_port name
    (cd "$work" && RUST_LOG=${RUST_LOG:-warn} exec "$BIN" run -c "$1") >"$work/mailvalve-$3.log" 2>&1 &
    MV_PID=$!
    pids+=("$MV_PID")
    wait_port "$2" "$MV_PID" || {
        echo "mailvalve did not start; its log:" >&2
        cat "$work/mailvalve-$3.log" >&2
        return 1
    }
}

# Seconds between two $EPOCHREALTIME stamps, 3 decimals.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

# --- private Postfix instances (need root) --------------------------------------------

pf_instances=() # directories of the instances started, stopped by cleanup()

# The services of Debian's /etc/postfix/master.cf, without chroot (there is no chroot
# skeleton in a temp dir) and without the pipe transports; postlog for maillog_file.
# One file, shared with tests/support/postfix.rs.
PF_SERVICES=$(cat tests/data/postfix-master-services.cf)

# `postfix -c DIR/conf VERB`, bounded; postfix prints its errors only to a terminal,
# hence `script` when available. Output goes to DIR/postfix-VERB.out.
pf_cmd() { # dir verb
    local out="$1/postfix-$2.out"
    if command -v script >/dev/null; then
        timeout 60 script -qec "postfix -c $1/conf $2" /dev/null >"$out" 2>&1
    else
        timeout 60 postfix -c "$1/conf" "$2" >"$out" 2>&1
    fi
}

pf_master_pid() { tr -d ' \n' <"$1/queue/pid/master.pid" 2>/dev/null || true; } # dir

# Stops the instance in DIR if it runs (bounded: 10 s, then SIGKILL to its master).
pf_stop() { # dir
    [ -d "$1/conf" ] || return 0
    local pid
    pid=$(pf_master_pid "$1")
    [ -n "$pid" ] && alive "$pid" || return 0
    pf_cmd "$1" stop || echo "postfix stop failed: $(cat "$1/postfix-stop.out")" >&2
    for _ in $(seq 1 100); do
        alive "$pid" || return 0
        sleep 0.1
    done
    echo "Postfix master $pid still running 10 s after stop; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

pf_stop_all() {
    local d
    for d in "${pf_instances[@]}"; do
        pf_stop "$d"
    done
}
cleanup_hooks+=(pf_stop_all)

# Sets up and starts a Postfix in DIR (its conf, queue, data and log DIR/postfix.log)
# with one smtpd on 127.0.0.1:PORT accepting from 127.0.0.0/8, no local domains; the
# main.cf lines read from stdin say where mail goes (relayhost, default_transport) and
# what is limited, and may override the base lines. Sets PF_PID (its master). Its
# directory and $work must be searchable by user postfix (the caller's chmod).
pf_start() { # dir port  < extra main.cf lines
    local extra
    extra=$(cat)
    mkdir -p "$1/conf" "$1/queue" "$1/data"
    chmod 711 "$work" "$1" # Postfix's daemons run as user postfix
    # queue_directory belongs to root (Postfix makes its subdirectories for postfix),
    # data_directory to postfix.
    chmod 755 "$1/queue"
    chown postfix "$1/data"
    cat >"$1/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $1/queue
data_directory = $1/data
maillog_file = $1/postfix.log
maillog_file_prefixes = $1
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtputf8_enable = no
$extra
CF
    printf '127.0.0.1:%s inet n - n - - smtpd\n%s\n' "$2" "$PF_SERVICES" >"$1/conf/master.cf"
    pf_instances+=("$1")
    if ! pf_cmd "$1" start; then
        echo "postfix start failed:" >&2
        cat "$1/postfix-start.out" >&2
        return 1
    fi
    PF_PID=$(pf_master_pid "$1")
    [ -n "$PF_PID" ] || {
        echo "postfix start ($1): no master.pid" >&2
        return 1
    }
    wait_port "$2" "$PF_PID"
}
