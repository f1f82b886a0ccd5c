#!/usr/bin/env bash
# Compares mqttd with Mosquitto and rumqttd on this machine, using `mqttd bench` as the load
# generator for all three, and prints one table with the figures and the ratios to mqttd.
#
# Usage: tests/bench/compare.sh            (from anywhere; about 13 minutes)
#
# It installs nothing. Get the peers first (a missing one is skipped with a notice):
#   Mosquitto:  apt-get install -y mosquitto
#               (on Debian the package starts a system service on port 1883; it does not
#               matter here, every broker below listens on its own port, but
#               `service mosquitto stop` frees the core it may use)
#   rumqttd:    cargo install rumqttd
#               (crate and binary are both `rumqttd`; with rustc >= 1.89, `--locked` fails
#               on the pinned metrics 0.22.1, so install without it)
#
# Each broker runs alone, on a loopback port, with the equivalent configuration: anonymous
# access, no persistence, logging of warnings only, everything else at its defaults (written
# to a temporary directory). The load generator runs on the same machine, so it shares the
# cores with the broker: the figures compare brokers under the same handicap, they are not
# what the brokers do on a machine of their own.
#
# The brokers take turns scenario by scenario, so that a change in the machine's background
# load (other guests on the host) spreads over all of them. Latency moves by more between two
# runs (±10 %) than the brokers differ by, so the latency scenarios run in rounds, each broker
# once per round in rotating order, and the table shows the median over the rounds. The
# connection rate moves by as much (one run at 19,000 connections, over in a second), so the
# conn scenarios run in rounds too.
#
# Environment: BENCH_DURATION (seconds per scenario, default 5), BENCH_LATENCY_ROUNDS (rounds
# of each latency scenario, default 5), BENCH_CONN_ROUNDS (rounds of each conn scenario,
# default 3), BENCH_MQTT (5 or 3, default 5; rumqttd uses its v5 or
# v4 listener to match), BENCH_PORT (first of three ports, default 18830), BENCH_BROKERS
# (default "mqttd mosquitto rumqttd").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${BENCH_DURATION:-5}
LATENCY_ROUNDS=${BENCH_LATENCY_ROUNDS:-5}
CONN_ROUNDS=${BENCH_CONN_ROUNDS:-3}
MQTT=${BENCH_MQTT:-5}
PORT=${BENCH_PORT:-18830}
BROKERS=${BENCH_BROKERS:-mqttd mosquitto rumqttd}

# name|metric|bench arguments. Metric: throughput (msg/s received), p50/p99 (latency in us),
# connect_rate (connections/s) and rss_per_connection_bytes.
SCENARIOS=(
    "fanin q0 64B|throughput|fanin --qos 0 --payload 64"
    "fanin q1 64B|throughput|fanin --qos 1 --payload 64"
    "fanin q2 64B|throughput|fanin --qos 2 --payload 64"
    "fanout q0 64B|throughput|fanout --qos 0 --payload 64"
    "fanout q1 64B|throughput|fanout --qos 1 --payload 64"
    "fanout q2 64B|throughput|fanout --qos 2 --payload 64"
    "p2p q0 64B|throughput|p2p --qos 0 --payload 64"
    "p2p q1 64B|throughput|p2p --qos 1 --payload 64"
    "p2p q2 64B|throughput|p2p --qos 2 --payload 64"
    "fanin q1 4KB|throughput|fanin --qos 1 --payload 4096"
    "latency q0 1000/s|p50,p99|latency --qos 0 --rate 1000"
    "latency q1 1000/s|p50,p99|latency --qos 1 --rate 1000"
    "conn 2000|connect_rate,rss_per_connection_bytes|conn --clients 2000"
    "conn 19000|connect_rate,rss_per_connection_bytes|conn --clients 19000"
)

# Every connection is a file in both the load generator and the broker, which inherit this
# limit. 19,000 rather than 20,000 connections: the hard limit on the machine these figures
# come from is 20,000 files per process, and each process needs a few more of its own.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "building mqttd (release)..." >&2
(cd "$ROOT" && cargo build --release --quiet)
MQTTD="$ROOT/target/release/mqttd"

# Each broker's configuration, equivalent as far as their options go.
cat >"$WORK/mqttd.toml" <<EOF
allow_anonymous = true
db_path = "$WORK/mqttd.db"
[[listener]]
bind = "127.0.0.1:$PORT"
EOF
cat >"$WORK/mosquitto.conf" <<EOF
listener $((PORT + 1)) 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
# rumqttd keeps messages in memory only (it has no persistence); the fields below are the
# ones its config loader requires, at the values of its sample rumqttd.toml.
cat >"$WORK/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$((PORT + 2))"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
[v5.1]
name = "v5-1"
listen = "127.0.0.1:$((PORT + 3))"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
EOF

broker_port() {
    case $1 in
        mqttd) echo "$PORT" ;;
        mosquitto) echo $((PORT + 1)) ;;
        rumqttd) if [[ $MQTT == 5 ]]; then echo $((PORT + 3)); else echo $((PORT + 2)); fi ;;
    esac
}

installed() {
    case $1 in
        mqttd) true ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

start_broker() {
    local log="$WORK/$1.log"
    case $1 in
        mqttd) RUST_LOG=warn "$MQTTD" --config "$WORK/mqttd.toml" >"$log" 2>&1 & ;;
        mosquitto) mosquitto -c "$WORK/mosquitto.conf" >"$log" 2>&1 & ;;
        rumqttd) rumqttd --quiet -c "$WORK/rumqttd.toml" >"$log" 2>&1 & ;;
    esac
    BROKER_PID=$!
    local port
    port=$(broker_port "$1")
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "$1 did not start listening on $port; its log:" >&2
    cat "$log" >&2
    return 1
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

# The value of a numeric JSON field (unique key names make a parser unnecessary).
field() {
    grep -o "\"$2\":[0-9.]*" <<<"$1" | head -n 1 | cut -d: -f2
}

# The median of numbers given one per line (the mean of the middle two for an even count).
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.10g", (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2 }'
}

ran=()
for broker in $BROKERS; do
    if installed "$broker"; then
        ran+=("$broker")
    else
        echo "notice: $broker is not installed; skipped (see the top of this script)" >&2
    fi
done

# One run of a scenario against a broker; its figures are appended to SAMPLES, its loss
# (the worst over the rounds) kept in LOSS.
declare -A SAMPLES LOSS
run_once() {
    local broker=$1 name=$2 metrics=$3 args=$4 port duration out json key value lost expected errors
    port=$(broker_port "$broker")
    # A fresh broker per run: no backlog, queue or allocator state carried over (which would
    # also spoil the memory-per-connection figure).
    rm -f "$WORK"/mqttd.db*
    start_broker "$broker" || return 0
    duration=$DURATION
    [[ $args == conn* ]] && duration=3
    echo "== $broker: $name" >&2
    # shellcheck disable=SC2086 # $args is a list of arguments
    out=$(timeout $((duration + 60)) "$MQTTD" bench $args --port "$port" --mqtt "$MQTT" \
        --duration "$duration" --broker-pid "$BROKER_PID" 2>>"$WORK/progress.log") || true
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "   $broker exited during the run" >&2
    fi
    stop_broker
    json=$(grep '^{' <<<"$out" || true)
    if [[ -z $json ]]; then
        echo "   no result: $out" >&2
        return 0
    fi
    grep -E '^  (throughput|correctness|latency|connect|broker RSS|errors)|^    ' <<<"$out" >&2 || true
    IFS=',' read -ra keys <<<"$metrics"
    for key in "${keys[@]}"; do
        value=$(field "$json" "$key")
        [[ -n $value ]] && SAMPLES["$name|$key|$broker"]+="$value"$'\n'
    done
    lost=$(field "$json" lost)
    expected=$(field "$json" expected)
    errors=$(field "$json" error_count)
    LOSS["$name|$broker"]=$(awk -v prev="${LOSS["$name|$broker"]:-0.0%/0}" "BEGIN {
        split(prev, p, \"%/\"); share = ($expected > 0 ? 100 * $lost / $expected : 0)
        printf \"%.1f%%/%d\", (share > p[1] ? share : p[1]), ($errors > p[2] ? $errors : p[2]) }")
}

for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name metrics args <<<"$entry"
    rounds=1
    [[ $args == latency* ]] && rounds=$LATENCY_ROUNDS
    [[ $args == conn* ]] && rounds=$CONN_ROUNDS
    for ((round = 0; round < rounds; round++)); do
        # Rotating order: no broker always runs first, or right after the same peer.
        for ((i = 0; i < ${#ran[@]}; i++)); do
            run_once "${ran[(i + round) % ${#ran[@]}]}" "$name" "$metrics" "$args"
        done
    done
done

declare -A RESULT
for sample in "${!SAMPLES[@]}"; do
    RESULT[$sample]=$(printf '%s' "${SAMPLES[$sample]}" | median)
done

# The table: one row per scenario and metric; ratio = peer / mqttd.
echo
echo "mqttd bench comparison: $(nproc) cores, MQTT $MQTT, ${DURATION} s per scenario, loopback."
echo "Note: the load generator shares the machine's cores with the broker."
echo "Throughput = messages received by all subscribers per second; latency in us (lower is"
echo "better); ratio = peer / mqttd; lost/err = share of expected deliveries lost / clients"
echo "that failed (the worst round). Each run has a freshly started broker. Latency: the median"
echo "over $LATENCY_ROUNDS rounds, conn: over $CONN_ROUNDS, the brokers taking turns."
printf '%-20s %-18s' scenario metric
for broker in "${ran[@]}"; do
    printf ' %12s' "$broker"
    [[ $broker != mqttd ]] && printf ' %7s' ratio
done
printf '   lost/err (%s)\n' "${ran[*]}"
for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name metrics _ <<<"$entry"
    IFS=',' read -ra keys <<<"$metrics"
    for key in "${keys[@]}"; do
        base=${RESULT["$name|$key|mqttd"]:-}
        printf '%-20s %-18s' "$name" "${key/rss_per_connection_bytes/rss B/conn}"
        for broker in "${ran[@]}"; do
            value=${RESULT["$name|$key|$broker"]:-}
            if [[ -n $value && $key != p50 && $key != p99 ]]; then
                printf ' %12.0f' "$value"
            else
                printf ' %12s' "${value:--}"
            fi
            if [[ $broker != mqttd ]]; then
                if [[ -n $value && -n $base ]] && awk "BEGIN{exit !($base > 0)}"; then
                    printf ' %7s' "$(awk "BEGIN{printf \"%.2f\", $value / $base}")"
                else
                    printf ' %7s' -
                fi
            fi
        done
        losses=()
        for broker in "${ran[@]}"; do losses+=("${LOSS["$name|$broker"]:--}"); done
        printf '   %s\n' "${losses[*]}"
    done
done
