# shellcheck shell=bash
# scripts/bench's near-cache mode (BENCH_MODE=near; issue 17, "Speed").
#
# Sourced by scripts/bench once its redis-server runs and its helpers are
# defined (add_target, add_keygate, start_target, free_port, problem, the
# cleanup trap, which also deletes the network namespace named in NETNS).
#
# Targets, per network: Redis directly, keygate without the near cache
# (`keygate`), keygate whose service has `[service.near_cache]`
# (`keygate-nc`; skipped with a note while keygate refuses that config).
# Networks: loopback, and with BENCH_NETEM a second redis-server in a
# network namespace behind a veth pair with `tc netem` delay each way.
# Workloads: Zipf(0.99) over BENCH_NEAR_KEYS at 1 and 16 in flight, and
# with BENCH_NEAR_UNIFORM=1 uniform keys over BENCH_NEAR_UNIFORM_KEYS too
# (=only: the uniform rows alone).
# Every (round, workload, network, target) run is one benches/nearload.rs
# run of BENCH_DURATION seconds, interleaved round-robin. BENCH_BASELINE
# adds another keygate build as `keygate-baseline`, configured as `keygate`.

DURATION="${BENCH_DURATION:-5}"
NEAR_KEYS="${BENCH_NEAR_KEYS:-1000000}"
NEAR_CLIENTS="${BENCH_NEAR_CLIENTS:-50}"
NEAR_MAX_BYTES="${BENCH_NEAR_MAX_BYTES:-134217728}"
NEAR_MAX_AGE="${BENCH_NEAR_MAX_AGE:-10s}"
NEAR_WARM="${BENCH_NEAR_WARM:-10}"
NEAR_WARM_MAX="${BENCH_NEAR_WARM_MAX:-$NEAR_WARM}"
NEAR_SETTLE="${BENCH_NEAR_SETTLE:-0.5}"
NEAR_UNIFORM="${BENCH_NEAR_UNIFORM:-0}"
[[ $NEAR_UNIFORM == 0 || $NEAR_UNIFORM == 1 || $NEAR_UNIFORM == only ]] || kg_die "BENCH_NEAR_UNIFORM must be 0, 1 or only, not '$NEAR_UNIFORM'"
NEAR_UNIFORM_KEYS="${BENCH_NEAR_UNIFORM_KEYS:-10000000}"
NETEM="${BENCH_NETEM:-auto}"
NETEM_DELAY="${BENCH_NETEM_DELAY:-0.5ms}"
NEAR_PASSWORD="benchpw"
[[ $NEAR_MAX_AGE =~ ^[1-9][0-9]*(ms|s|m)$ ]] || kg_die "BENCH_NEAR_MAX_AGE must look like 10s, 500ms or 2m, not '$NEAR_MAX_AGE'"
[[ $NEAR_WARM =~ ^[0-9]+$ ]] || kg_die "BENCH_NEAR_WARM must be a whole number of seconds, not '$NEAR_WARM'"
[[ $NEAR_WARM_MAX =~ ^[0-9]+$ ]] || kg_die "BENCH_NEAR_WARM_MAX must be a whole number of seconds, not '$NEAR_WARM_MAX'"
[[ $NEAR_SETTLE =~ ^[0-9]+(\.[0-9]+)?$ ]] || kg_die "BENCH_NEAR_SETTLE must be a number of points, like 0.5, not '$NEAR_SETTLE'"
for knob in DURATION NEAR_KEYS NEAR_CLIENTS NEAR_MAX_BYTES NEAR_UNIFORM_KEYS; do
    [[ ${!knob} =~ ^[1-9][0-9]*$ ]] || kg_die "BENCH_$knob must be a positive integer, not '${!knob}'"
done
[[ $NETEM == auto || $NETEM == 0 || $NETEM == 1 ]] || kg_die "BENCH_NETEM must be auto, 0 or 1, not '$NETEM'"
[[ $NETEM_DELAY =~ ^([0-9.]+(us|ms)|0)$ ]] || kg_die "BENCH_NETEM_DELAY must look like 0.5ms, 500us or 0 (the veth pair alone), not '$NETEM_DELAY'"

kg_require_cargo
kg_info "building keygate and the load generator (release)"
(cd "$KG_ROOT" && cargo build --release --bin keygate) >&2 || kg_die "cargo build failed"
NEARLOAD="$(cd "$KG_ROOT" && cargo bench --bench nearload --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "nearload" and m.get("executable"):
        print(m["executable"])
')"
[[ -x $NEARLOAD ]] || kg_die "could not build benches/nearload.rs (cargo bench --bench nearload --no-run)"

# The service both keygate targets run (no `default` service: every
# connection logs in, `AUTH benchpw`).
SERVICE_NEAR_PLAIN="name = \"bench\"\nprefix = \"\"\nisolation = false\npassword = \"$NEAR_PASSWORD\""
# The same service with the near cache, its keys as issue 17 spells them.
SERVICE_NEAR_CACHE="$SERVICE_NEAR_PLAIN\n\n[service.near_cache]\nenabled = true\nmax_bytes = $NEAR_MAX_BYTES\nmax_age = \"$NEAR_MAX_AGE\"\ncommands = [\"GET\"]\nmax_value_bytes = 65536"

declare -A TARGET_HOST=() TARGET_ADMIN=() TARGET_NET=() NET_REDIS_PID=() NET_REDIS_ADDR=()
NOTES=()

# add_near_keygate NAME NETWORK SERVICE_LINES: one-worker keygate (as in the
# default mode) with an admin listener, on BACKEND_ADDR.
add_near_keygate() {
    local name="$1" net="$2" service="$3" admin
    admin="$(free_port)"
    add_keygate "$name" "$NEAR_PASSWORD" "workers = 1\nadmin_listen = \"127.0.0.1:$admin\"" "$service"
    TARGET_HOST[$name]=127.0.0.1
    TARGET_ADMIN[$name]="$admin"
    TARGET_NET[$name]="$net"
    if ! "$KEYGATE_BIN" --check --config "$WORK/$name.toml" >"$WORK/$name.check" 2>&1; then
        local why
        why="$(grep -m1 '^line' "$WORK/$name.check" | cut -c1-120 || true)"
        NOTES+=("$name skipped: keygate --check refuses its config: ${why:-see $name.check}")
        drop_target "$name"
    fi
}

# add_network NET REDIS_HOST REDIS_PORT REDIS_PID: the three targets of one network.
add_network() {
    local net="$1" host="$2" port="$3" suffix=""
    [[ $net == local ]] || suffix="-$net"
    NET_REDIS_PID[$net]="$4"
    NET_REDIS_ADDR[$net]="$host:$port"
    add_target "redis$suffix" "$port" ""
    TARGET_HOST[redis$suffix]="$host"
    TARGET_NET[redis$suffix]="$net"
    BACKEND_ADDR="$host:$port"
    add_near_keygate "keygate$suffix" "$net" "$SERVICE_NEAR_PLAIN"
    add_near_keygate "keygate-nc$suffix" "$net" "$SERVICE_NEAR_CACHE"
    if [[ -n ${BENCH_BASELINE:-} ]]; then
        # Another build (BENCH_BASELINE) configured as `keygate`.
        [[ -x $BENCH_BASELINE ]] || kg_die "BENCH_BASELINE is not an executable: $BENCH_BASELINE"
        local current="$KEYGATE_BIN"
        KEYGATE_BIN="$BENCH_BASELINE"
        add_near_keygate "keygate-baseline$suffix" "$net" "$SERVICE_NEAR_PLAIN"
        KEYGATE_BIN="$current"
    fi
    unset BACKEND_ADDR
}

add_network local 127.0.0.1 "$REDIS_PORT" "${STARTED_PIDS[0]}"

# ---- netem: Redis behind a veth pair in a namespace of this run's own ----
# Fails with a note in NETEM_WHY; the cleanup trap deletes the namespace
# (and the veth pair with it).
netem_setup() {
    local id=$(($$ % 250 + 1)) ns="kgbench$$" outer="kgb$$o" inner="kgb$$i" tc_error latency
    local net_prefix="10.213.$id"
    NETEM_HOST="$net_prefix.2"
    NETEM_WHY="creating network namespace $ns or its veth pair failed (see the warnings)"
    ip netns add "$ns" || return 1
    NETNS="$ns"
    ip link add "$outer" type veth peer name "$inner" &&
        ip link set "$inner" netns "$ns" &&
        ip addr add "$net_prefix.1/30" dev "$outer" &&
        ip link set "$outer" up &&
        ip netns exec "$ns" ip addr add "$NETEM_HOST/30" dev "$inner" &&
        ip netns exec "$ns" ip link set "$inner" up || return 1
    if [[ $NETEM_DELAY == 0 ]]; then
        : # the namespace and veth pair alone, no qdisc
    elif ! tc_error="$(tc qdisc add dev "$outer" root netem delay "$NETEM_DELAY" 2>&1)" ||
        ! tc_error="$(ip netns exec "$ns" tc qdisc add dev "$inner" root netem delay "$NETEM_DELAY" 2>&1)"; then
        NETEM_WHY="this kernel has no netem qdisc (tc: ${tc_error//$'\n'/ })"
        return 1
    fi
    mkdir -p "$WORK/redis-netem"
    # Protected mode off: the server is reachable only over this veth pair.
    ip netns exec "$ns" "${SERVER_PIN[@]}" redis-server --bind "$NETEM_HOST" --port 6379 \
        --protected-mode no --dir "$WORK/redis-netem" --save '' --appendonly no --logfile "$WORK/redis-netem.log" &
    NETEM_REDIS_PID=$!
    STARTED_PIDS+=("$NETEM_REDIS_PID")
    NETEM_WHY="redis-server at $NETEM_HOST in $ns did not start"
    kg_wait_until 20 "redis-server at $NETEM_HOST" \
        bash -c "[[ \$(timeout 3 redis-cli -h $NETEM_HOST -p 6379 PING 2>/dev/null) == PONG ]]" || return 1
    # The delay is there: a second of PINGs (redis-cli --latency: min, max
    # and average round trip in ms), about twice the delay.
    latency="$(timeout 10 redis-cli -h "$NETEM_HOST" -p 6379 --latency --raw 2>/dev/null)"
    NOTES+=("netem: Redis at $NETEM_HOST in network namespace $ns behind a veth pair, netem delay $NETEM_DELAY each way; PING round trip (redis-cli --latency: min max avg samples) $latency ms")
    kg_info "netem: PING round trip to $NETEM_HOST (min max avg samples, ms): $latency"
}

# ---- without netem: a second Redis behind nearload's delay line ----
# The same distance in user space: every chunk is held BENCH_NETEM_DELAY in
# each direction by a relay on loopback, for the direct client and for
# keygate alike.
delay_line_setup() {
    local us rport
    case "$NETEM_DELAY" in
    *ms) us="$(awk -v d="${NETEM_DELAY%ms}" 'BEGIN {printf "%d", d * 1000}')" ;;
    *us) us="${NETEM_DELAY%us}" ;;
    *) return 1 ;;
    esac
    rport="$(free_port)"
    DELAY_PORT="$(free_port)"
    mkdir -p "$WORK/redis-delay"
    "${SERVER_PIN[@]}" redis-server --bind 127.0.0.1 --port "$rport" --dir "$WORK/redis-delay" \
        --save '' --appendonly no --logfile "$WORK/redis-delay.log" &
    DELAY_REDIS_PID=$!
    STARTED_PIDS+=("$DELAY_REDIS_PID")
    kg_wait_until 20 "redis-server on $rport" \
        bash -c "[[ \$(timeout 3 redis-cli -p $rport PING 2>/dev/null) == PONG ]]" || return 1
    "${SERVER_PIN[@]}" "$NEARLOAD" --delay-line "$DELAY_PORT" --delay-us "$us" --port "$rport" \
        >"$WORK/delay-line.log" 2>&1 &
    STARTED_PIDS+=("$!")
    kg_wait_until 20 "the delay line on $DELAY_PORT" \
        bash -c "[[ \$(timeout 3 redis-cli -p $DELAY_PORT PING 2>/dev/null) == PONG ]]" || return 1
    local latency
    latency="$(timeout 10 redis-cli -p "$DELAY_PORT" --latency --raw 2>/dev/null)"
    NOTES+=("delay: no netem qdisc here, so Redis sits behind nearload's delay line on loopback, $NETEM_DELAY each way; PING round trip (redis-cli --latency: min max avg samples) $latency ms")
    kg_info "delay line: PING round trip (min max avg samples, ms): $latency"
}

run_netem=0
if [[ $NETEM != 0 ]]; then
    if ((EUID != 0)); then
        NOTES+=("netem skipped: needs root (network namespace, veth, tc)")
    elif ! command -v ip >/dev/null || ! command -v tc >/dev/null || ! ip netns list >/dev/null 2>&1; then
        NOTES+=("netem skipped: \`ip netns\` or \`tc\` is unavailable (apt-get install iproute2)")
    else
        run_netem=1
    fi
    if ((!run_netem)) && [[ $NETEM == 1 ]]; then
        kg_die "BENCH_NETEM=1 but ${NOTES[-1]}"
    fi
fi
if ((run_netem)); then
    if netem_setup; then
        # Without a delay the rows are the veth pair's alone: named so.
        if [[ $NETEM_DELAY == 0 ]]; then
            add_network veth "$NETEM_HOST" 6379 "$NETEM_REDIS_PID"
        else
            add_network netem "$NETEM_HOST" 6379 "$NETEM_REDIS_PID"
        fi
    elif [[ $NETEM_WHY == *"no netem qdisc"* ]] && delay_line_setup; then
        add_network delay 127.0.0.1 "$DELAY_PORT" "$DELAY_REDIS_PID"
    else
        [[ $NETEM == 1 ]] && kg_die "BENCH_NETEM=1 but $NETEM_WHY"
        kg_warn "netem skipped: $NETEM_WHY"
        NOTES+=("netem skipped: $NETEM_WHY")
    fi
fi

for name in "${TARGETS[@]}"; do
    [[ -n ${TARGET_CMD[$name]} ]] || continue
    if ! start_target "$name"; then
        problem "$name failed to start" "skipping it"
        drop_target "$name"
    fi
done

# ---- pre-fill: every key once, per Redis ----
nearload() {
    timeout $((DURATION + 120)) "${CLIENT_PIN[@]}" "$NEARLOAD" "$@"
}
for net in "${!NET_REDIS_ADDR[@]}"; do
    addr="${NET_REDIS_ADDR[$net]}"
    if [[ $NEAR_UNIFORM != only ]]; then
        kg_info "pre-filling $NEAR_KEYS keys in the $net Redis ($addr)"
        nearload --host "${addr%:*}" --port "${addr##*:}" --prefill --keys "$NEAR_KEYS" --key-prefix z: >&2 ||
            kg_die "pre-filling the $net Redis failed"
    fi
    if [[ $NEAR_UNIFORM != 0 ]]; then
        kg_info "pre-filling $NEAR_UNIFORM_KEYS keys in the $net Redis (uniform workload)"
        nearload --host "${addr%:*}" --port "${addr##*:}" --prefill --keys "$NEAR_UNIFORM_KEYS" --key-prefix u: >&2 ||
            kg_die "pre-filling the $net Redis failed"
    fi
done

# Workloads: label|nearload arguments.
NEAR_WORKLOADS=()
if [[ $NEAR_UNIFORM != only ]]; then
    NEAR_WORKLOADS+=(
        "zipf P1|--dist zipf --keys $NEAR_KEYS --key-prefix z: --pipeline 1"
        "zipf P16|--dist zipf --keys $NEAR_KEYS --key-prefix z: --pipeline 16"
    )
fi
if [[ $NEAR_UNIFORM != 0 ]]; then
    NEAR_WORKLOADS+=(
        "uniform P1|--dist uniform --keys $NEAR_UNIFORM_KEYS --key-prefix u: --pipeline 1"
        "uniform P16|--dist uniform --keys $NEAR_UNIFORM_KEYS --key-prefix u: --pipeline 16"
    )
fi

# CPU ticks (user + system) a process has used.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || {
        echo 0
        return
    }
    stat="${stat##*) }"
    awk '{print $12 + $13}' <<<"$stat"
}

# The sum of every sample of metric NAME on admin port PORT (empty without one).
metric_total() {
    local port="$1" name="$2"
    [[ -n $port ]] || return 0
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' _ "$port" 2>/dev/null |
        awk -v name="$2" '$1 == name || index($1, name "{") == 1 {sum += $NF; seen = 1} END {if (seen) print sum}'
}

RAW="$WORK/near.csv"
printf 'round,network,target,workload,ops_per_sec,p50_us,p99_us,ops,errors,hits,misses,proxy_cpu_us_per_req,redis_cpu_us_per_req,warm_s\n' >"$RAW"
TICK_US=$((1000000 / $(getconf CLK_TCK)))

near_run() {
    local round="$1" name="$2" label="$3"
    shift 3
    local net="${TARGET_NET[$name]}" admin="${TARGET_ADMIN[$name]:-}" out="$WORK/near.out"
    local redis_pid="${NET_REDIS_PID[$net]}" proxy_pid="${TARGET_PID[$name]:-}"
    local -a auth=()
    [[ -n ${TARGET_PASSWORD[$name]} ]] && auth=(--auth "${TARGET_PASSWORD[$name]}")
    local hits0 misses0 r0 p0 hits1 misses1 r1 p1 warmed=0 last="" now
    if [[ -n $admin && $NEAR_WARM != 0 ]] && [[ $name == keygate-nc* ]]; then
        # The cache's steady state is measured, not its filling: the same
        # load, unmeasured, first (counted in neither ops nor hit ratio),
        # in windows until a window's hit ratio stops rising (or
        # BENCH_NEAR_WARM_MAX): a cache over 1M Zipf keys fills its tail
        # for minutes, and a fixed warm-up measured a point on that slope.
        while ((warmed < NEAR_WARM_MAX || warmed == 0)); do
            hits0="$(metric_total "$admin" keygate_near_cache_hits_total)"
            misses0="$(metric_total "$admin" keygate_near_cache_misses_total)"
            nearload --host "${TARGET_HOST[$name]}" --port "${TARGET_PORT[$name]}" "${auth[@]}" \
                --connections "$NEAR_CLIENTS" --duration "$NEAR_WARM" --warmup 0 --label warm "$@" \
                >/dev/null 2>"$WORK/near.err" || true
            warmed=$((warmed + NEAR_WARM))
            hits1="$(metric_total "$admin" keygate_near_cache_hits_total)"
            misses1="$(metric_total "$admin" keygate_near_cache_misses_total)"
            now="$(python3 -c "h, m = $hits1 - $hits0, $misses1 - $misses0; print(f'{100 * h / (h + m):.2f}' if h + m else '')" 2>/dev/null)" || now=""
            [[ -n $now ]] || break
            if [[ -n $last ]] && python3 -c "import sys; sys.exit(0 if $now - $last < $NEAR_SETTLE else 1)"; then
                break
            fi
            last="$now"
        done
        kg_info "$name warmed for $warmed s (last window's hit ratio ${now:-?}%)"
    fi
    hits0="$(metric_total "$admin" keygate_near_cache_hits_total)"
    misses0="$(metric_total "$admin" keygate_near_cache_misses_total)"
    r0="$(cpu_ticks "$redis_pid")"
    p0=0
    [[ -n $proxy_pid ]] && p0="$(cpu_ticks "$proxy_pid")"
    if ! nearload --host "${TARGET_HOST[$name]}" --port "${TARGET_PORT[$name]}" "${auth[@]}" \
        --connections "$NEAR_CLIENTS" --duration "$DURATION" --label "$name" "$@" >"$out" 2>"$WORK/near.err"; then
        tail -n 5 "$WORK/near.err" >&2 || true
        return 1
    fi
    r1="$(cpu_ticks "$redis_pid")"
    p1=0
    [[ -n $proxy_pid ]] && p1="$(cpu_ticks "$proxy_pid")"
    hits1="$(metric_total "$admin" keygate_near_cache_hits_total)"
    misses1="$(metric_total "$admin" keygate_near_cache_misses_total)"
    python3 - "$out" "$round" "$net" "$name" "$label" "$((r1 - r0))" "$((p1 - p0))" "$TICK_US" \
        "$hits0" "$hits1" "$misses0" "$misses1" "$([[ -n $proxy_pid ]] && echo 1 || echo 0)" "$warmed" >>"$RAW" <<'EOF'
import sys
out, rnd, net, name, label, rt, pt, tick, h0, h1, m0, m1, has_proxy, warmed = sys.argv[1:]
line = next(l for l in open(out) if l.startswith("nearload "))
f = dict(kv.split("=", 1) for kv in line.split()[1:])
ops = int(f["ops"])
# CPU over the whole run, warm-up included, per request answered in it.
all_ops = int(f["all_ops"])
per = lambda ticks: f"{int(ticks) * int(tick) / all_ops:.2f}" if all_ops else ""
delta = lambda a, b: str(int(float(b) - float(a))) if a and b else ""
print(",".join([rnd, net, name, f'"{label}"', f["ops_per_sec"], f["p50_us"], f["p99_us"], f["ops"],
                f["errors"], delta(h0, h1), delta(m0, m1), per(pt) if has_proxy == "1" else "", per(rt), warmed]))
EOF
    if [[ $(grep -o 'errors=[0-9]*' "$out") != errors=0 ]]; then
        kg_warn "$name answered with errors: $(cat "$WORK/near.err")"
    fi
}

total=$((ROUNDS * ${#NEAR_WORKLOADS[@]}))
step=0
for ((round = 1; round <= ROUNDS; round++)); do
    for workload in "${NEAR_WORKLOADS[@]}"; do
        label="${workload%%|*}"
        read -ra args <<<"${workload#*|}"
        step=$((step + 1))
        for name in "${TARGETS[@]}"; do
            kg_info "[$step/$total] round $round, $label, $name"
            if ! near_run "$round" "$name" "$label" "${args[@]}"; then
                problem "nearload failed against $name (round $round, $label)" "this sample is missing"
                if [[ -n ${TARGET_PID[$name]:-} ]] && ! kg_pid_alive "${TARGET_PID[$name]}"; then
                    kg_warn "$name has exited: dropping it from the remaining runs"
                    tail -n 10 "$WORK/$name.log" >&2 || true
                    drop_target "$name"
                fi
            fi
        done
    done
done

# ---- the report ----
STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$KG_ROOT/run"
REPORT="$KG_ROOT/run/bench-near-$STAMP.md"
cp "$RAW" "$KG_ROOT/run/bench-near-$STAMP.csv"
commit="$(git -C "$KG_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$KG_ROOT" diff --quiet HEAD 2>/dev/null || commit+=" (with uncommitted changes)"
notes="$(printf '%s\n' "${NOTES[@]}" "${SKIPPED[@]/#/skipped: }")"

python3 - "$RAW" "$notes" <<EOF >"$REPORT"
import csv, statistics, sys

raw, notes = sys.argv[1], [n for n in sys.argv[2].splitlines() if n.strip()]
rows = list(csv.DictReader(open(raw, newline="")))
groups = {}
for r in rows:
    groups.setdefault((r["network"], r["workload"], r["target"]), []).append(r)

def med(key, col):
    vals = [float(r[col]) for r in groups.get(key, []) if r[col] != ""]
    return statistics.median(vals) if vals else None

def fmt(v, spec):
    return format(v, spec) if v is not None else "-"

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

def hit_ratio(key):
    hs = sum(int(r["hits"]) for r in groups.get(key, []) if r["hits"] != "")
    ms = sum(int(r["misses"]) for r in groups.get(key, []) if r["misses"] != "")
    return f"{hs / (hs + ms):.1%}" if hs + ms else "-"

print("# keygate near-cache benchmark")
print()
print("- date: $(date -u '+%Y-%m-%d %H:%M UTC'), keygate commit: $commit")
print("- host: $(nproc) cores, $(uname -srm); keygate, Redis and the load generator share them")
print("- layout: $LAYOUT")
print("- workload: benches/nearload.rs, $NEAR_CLIENTS connections, 95% GET / 5% SET, 64-byte values, "
      "zipf: Zipf(0.99) over $NEAR_KEYS keys; uniform: over $NEAR_UNIFORM_KEYS keys; "
      "P1/P16: requests in flight per connection; $DURATION s measured after 1 s of warm-up")
print("- keygate: one worker; keygate-nc: the same with [service.near_cache] enabled, max_bytes = $NEAR_MAX_BYTES")
for n in notes:
    print(f"- {n}")
print(f"- median of $ROUNDS rounds, targets interleaved round-robin; CPU: user + system of the proxy and of Redis per request")
print()
print("| network | workload | target | ops/s | p50 µs | p99 µs | ÷ redis | ÷ keygate | hit ratio | proxy CPU µs/req | Redis CPU µs/req | runs |")
print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
seen = []
for r in rows:
    key = (r["network"], r["workload"], r["target"])
    if key not in seen:
        seen.append(key)
for net, workload, target in seen:
    key = (net, workload, target)
    suffix = "" if net == "local" else f"-{net}"
    ops = med(key, "ops_per_sec")
    print(f"| {net} | {workload} | {target} | {fmt(ops, ',.0f')} | {fmt(med(key, 'p50_us'), '.1f')} "
          f"| {fmt(med(key, 'p99_us'), '.1f')} | {ratio(ops, med((net, workload, 'redis' + suffix), 'ops_per_sec'))} "
          f"| {ratio(ops, med((net, workload, 'keygate' + suffix), 'ops_per_sec'))} | {hit_ratio(key)} "
          f"| {fmt(med(key, 'proxy_cpu_us_per_req'), '.2f')} | {fmt(med(key, 'redis_cpu_us_per_req'), '.2f')} "
          f"| {len(groups[key])} |")
warm = [(k, [r.get("warm_s") or "0" for r in groups[k]]) for k in seen if any(r.get("warm_s") not in (None, "", "0") for r in groups[k])]
if warm:
    print()
    print(f"Warm-up before each run, by round (windows of $NEAR_WARM s until one gains under $NEAR_SETTLE points of hit ratio, at most $NEAR_WARM_MAX s):")
    print()
    for (net, workload, target), secs in warm:
        print(f"- {net} {workload} {target}: {', '.join(s + ' s' for s in secs)}")
EOF

cat "$REPORT"
kg_info "report saved to ${REPORT#"$KG_ROOT"/}, raw samples to run/bench-near-$STAMP.csv"
