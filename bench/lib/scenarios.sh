# bench/lib/scenarios.sh — what each scenario measures, one function each.
#
# scenario_N SYS runs with the system already started for scenario N
# (bench/run does start_system / stop_system around it) and records metrics
# with `record N METRIC SYS VALUE`. Load generators run on $LOAD_CPU with a
# time limit. A measurement that fails records an empty value and a note, so
# the table shows n/a instead of a wrong number.
#
# Sourced by bench/run.

# --- helpers ----------------------------------------------------------------------
# wrk latency "123.45us" / "1.20ms" / "1.01s" -> microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print n }'
}

# measure_begin / measure_end SCEN SYS bracket a measured run: they record
# cpu (% of one core used by the system's processes), backend_cpu,
# core_other (% of the proxy core busy with anything else: other work on the
# machine disturbs the numbers, and the report says so) and load_core (% of
# the load core busy: client, backend and anything else).
measure_begin() {
    M_PIDS=$(sys_pids)
    M_C0=$(cpu_ticks $M_PIDS); M_B0=$(cpu_ticks "$BACKEND_PID")
    read -r M_K0 M_KT0 < <(core_ticks "$PROXY_CPU")
    read -r M_L0 M_LT0 < <(core_ticks "$LOAD_CPU")
    M_T0=$(now)
}
measure_end() {
    local scen=$1 sys=$2 c1 b1 k1 kt1 l1 lt1 t1 el own other
    t1=$(now); c1=$(cpu_ticks $M_PIDS); b1=$(cpu_ticks "$BACKEND_PID")
    read -r k1 kt1 < <(core_ticks "$PROXY_CPU")
    read -r l1 lt1 < <(core_ticks "$LOAD_CPU")
    el=$(fsub "$t1" "$M_T0")
    pct() { awk -v d="$1" -v t="$el" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", d / hz / t * 100}'; }
    MEASURED_CPU=$(pct $((c1 - M_C0)))
    record "$scen" cpu "$sys" "$MEASURED_CPU"
    record "$scen" backend_cpu "$sys" "$(pct $((b1 - M_B0)))"
    # On the proxy core, only the system's own ticks are expected (none for
    # direct: the backend runs on the load core).
    own=$((c1 - M_C0)); [ "$sys" = direct ] && own=0
    other=$(awk -v k=$((k1 - M_K0)) -v kt=$((kt1 - M_KT0)) -v o="$own" \
            'BEGIN { v = kt > 0 ? (k - o) / kt * 100 : 0; printf "%.1f", (v < 0 ? 0 : v) }')
    record "$scen" core_other "$sys" "$other"
    # How busy the load core was (client + backend + anything else): near
    # 100% means the client side, not the system, may have set the pace.
    record "$scen" load_core "$sys" "$(awk -v k=$((l1 - M_L0)) -v kt=$((lt1 - M_LT0)) \
            'BEGIN { printf "%.1f", (kt > 0 ? k / kt * 100 : 0) }')"
    if awk -v v="$other" 'BEGIN { exit !(v > 15) }'; then
        note "$scen" "$sys" "core $PROXY_CPU was ${other}% busy with other processes during the run: disturbed"
    fi
}

# record_cpu_per_req SCEN SYS RPS: microseconds of the system's CPU per
# request in the run measure_end just closed.
record_cpu_per_req() {
    record "$1" cpu_us_per_req "$2" "$(awk -v r="$3" -v c="$MEASURED_CPU" \
        'BEGIN { if (r > 0) printf "%.2f", c / 100 / r * 1e6 }')"
}

# run_wrk SCEN SYS URL [wrk args...]: warm-up, then a measured run; records
# rps, p50_us, p99_us and the CPU figures above.
# Sets WRK_REQUESTS to the measured run's request count (scenario 8 needs it)
# and WRK_RPS to its rate.
WRK_REQUESTS=0 WRK_RPS=0
run_wrk() {
    local scen=$1 sys=$2 url=$3 out=$WORK/wrk.out
    shift 3
    WRK_REQUESTS=0
    if [ "$WARMUP" -gt 0 ]; then
        on_load $((WARMUP + 15)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$@" "$url" > /dev/null 2>&1
    fi
    [ -n "${BEFORE_RUN:-}" ] && $BEFORE_RUN
    measure_begin
    on_load $((SECONDS_PER_RUN + 20)) wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" \
        --latency "$@" "$url" > "$out" 2>&1
    local rc=$?
    measure_end "$scen" "$sys"
    local rps p50 p99 reqs non2xx errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    reqs=$(awk '/requests in/ {print $1}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
    if [ "$rc" != 0 ] || [ -z "$rps" ] || [ "${reqs:-0}" = 0 ]; then
        note "$scen" "$sys" "wrk failed (rc $rc): $(tr '\n' ' ' < "$out" | cut -c1-200)"
        record "$scen" rps "$sys" ""; return 1
    fi
    if [ "${non2xx:-0}" -gt 0 ]; then
        note "$scen" "$sys" "$non2xx of $reqs responses were not 2xx/3xx: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    if [ "${errs:-0}" -gt $(( reqs / 1000 )) ]; then
        note "$scen" "$sys" "wrk socket errors: $errs of $reqs requests: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    WRK_REQUESTS=$reqs WRK_RPS=$rps
    record "$scen" rps "$sys" "$rps"
    # Requests per CPU-second of the system: less sensitive to other load on
    # the machine than req/s (informational; the targets use req/s).
    record "$scen" rps_per_cpu "$sys" "$(awk -v r="$rps" -v c="$MEASURED_CPU" 'BEGIN { if (c > 0) printf "%.1f", r / (c / 100) }')"
    record "$scen" p50_us "$sys" "$(to_us "$p50")"
    record "$scen" p99_us "$sys" "$(to_us "$p99")"
}
# --- 1, 2: keep-alive throughput and latency --------------------------------------
scenario_1() {
    local port=$HTTP_PORT
    [ "$1" = direct ] && port=$BACKEND_PORT
    run_wrk 1 "$1" "http://127.0.0.1:$port/1k" || return
    record_cpu_per_req 1 "$1" "$WRK_RPS"
}

scenario_2() { run_wrk 2 "$1" "https://127.0.0.1:$HTTPS_PORT/1k"; }

# --- 3, 4: handshakes ------------------------------------------------------------------
# Our own client (connload), not wrk: wrk reuses each connection's SSL object
# after a clean shutdown, so its "Connection: close" runs resume sessions
# (checked against nginx logging $ssl_session_reused: wrk 4.1.0 resumed 6177
# of 6181 handshakes, over TLS 1.2, the highest version it offers).
# connload opens $CONNS connections at a time, each: TCP connect, handshake,
# GET /1k with Connection: close, read the response, close.
#
# Proxy-bound? On one core the client does more crypto per full handshake
# than the server (an ECDSA verify costs ~3 signs), so raw handshakes/s on
# this machine can be capped by the client. We therefore also record the
# proxy's CPU use and handshakes per proxy CPU-second (rate / utilisation):
# the cost of a handshake to the proxy, which is what the target compares.
run_handshakes() {
    local scen=$1 sys=$2 mode=$3 out=$WORK/connload.out
    # No warm-up: a handshake has no cache to fill, and the time is better
    # spent keeping three rounds inside the 10-minute budget.
    measure_begin
    on_load $((SECONDS_PER_RUN + 20)) "$WORK/connload" -t -m "$mode" -p "$HTTPS_PORT" \
        -c "$CONNS" -d "$SECONDS_PER_RUN" > "$out" 2>&1
    measure_end "$scen" "$sys"
    local line rate full reused offered errors
    line=$(grep '^conns=' "$out")
    rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<< "$line")
    full=$(sed -n 's/.* full=\([0-9]*\).*/\1/p' <<< "$line")
    reused=$(sed -n 's/.* reused=\([0-9]*\).*/\1/p' <<< "$line")
    offered=$(sed -n 's/.* offered=\([0-9]*\).*/\1/p' <<< "$line")
    errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<< "$line")
    if [ -z "$rate" ] || { [ "${full:-0}" = 0 ] && [ "${reused:-0}" = 0 ]; }; then
        note "$scen" "$sys" "connload failed: $(tr '\n' ' ' < "$out" | cut -c1-200)"
        record "$scen" hs_rate "$sys" ""; return 1
    fi
    local total=$((full + reused))
    if [ "$errors" -gt $(( total / 100 )) ]; then
        note "$scen" "$sys" "$errors errors in $total handshakes: not counted ($(sed -n 's/.*first_error=//p' <<< "$line"))"
        record "$scen" hs_rate "$sys" ""; return 1
    fi
    [ "$errors" -gt 0 ] && note "$scen" "$sys" "$errors connection errors in $total"
    record "$scen" hs_rate "$sys" "$rate"
    record "$scen" hs_per_cpu "$sys" "$(awk -v r="$rate" -v c="$MEASURED_CPU" 'BEGIN { if (c > 0) printf "%.1f", r / (c / 100) }')"
    if [ "$mode" = resume ]; then
        # Of the handshakes that offered a session (all but the first
        # $CONNS), how many the server accepted.
        record "$scen" resumed_pct "$sys" "$(awk -v r="$reused" -v t="$offered" 'BEGIN { if (t > 0) printf "%.1f", r / t * 100 }')"
        [ "$reused" -lt $(( offered * 99 / 100 )) ] && note "$scen" "$sys" "only $reused of $offered offered sessions resumed"
    else
        record "$scen" resumed_pct "$sys" "$(awk -v r="$reused" -v t="$total" 'BEGIN {printf "%.1f", r / t * 100}')"
        [ "$reused" -gt 0 ] && note "$scen" "$sys" "$reused of $total handshakes resumed (expected none)"
    fi
    return 0
}

scenario_3() { run_handshakes 3 "$1" new; }
scenario_4() { run_handshakes 4 "$1" resume; }

# --- 5: SSE ----------------------------------------------------------------------
# One stream of $SSE_EVENTS events, $SSE_INTERVAL_MS apart; delay = arrival
# time at the client - the backend's write time (same CLOCK_MONOTONIC).
# "added" is that delay minus the direct run's delay in the same round.
scenario_5() {
    local sys=$1 port=$HTTP_PORT out=$WORK/sse.out
    [ "$sys" = direct ] && port=$BACKEND_PORT
    on_load 10 curl -s -o /dev/null "http://127.0.0.1:$port/1k"   # warm the upstream connection
    if ! on_load $(( SSE_EVENTS * SSE_INTERVAL_MS / 1000 + 20 )) "$WORK/sse_client" \
            127.0.0.1 "$port" "$SSE_EVENTS" "$SSE_INTERVAL_MS" > "$out" 2>&1; then
        note 5 "$sys" "sse_client failed: $(tr '\n' ' ' < "$out" | cut -c1-200)"
        record 5 delay_median_us "$sys" ""; return 1
    fi
    record 5 delay_median_us "$sys" "$(sed -n 's/.*median_us=\([0-9.]*\).*/\1/p' "$out")"
    record 5 delay_p99_us "$sys" "$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' "$out")"
    record 5 delay_max_us "$sys" "$(sed -n 's/.*max_us=\([0-9.]*\).*/\1/p' "$out")"
    # The same over HTTP/2 (prior knowledge; the backend speaks HTTP/1.1 only).
    [ "$sys" = direct ] && return 0
    if ! on_load $(( SSE_EVENTS * SSE_INTERVAL_MS / 1000 + 20 )) "$WORK/sse_client" \
            127.0.0.1 "$H2C_PORT" "$SSE_EVENTS" "$SSE_INTERVAL_MS" h2c > "$out" 2>&1; then
        note 5 "$sys" "sse_client h2c failed: $(tr '\n' ' ' < "$out" | cut -c1-200)"
        return 1
    fi
    record 5 h2_delay_median_us "$sys" "$(sed -n 's/.*median_us=\([0-9.]*\).*/\1/p' "$out")"
    record 5 h2_delay_max_us "$sys" "$(sed -n 's/.*max_us=\([0-9.]*\).*/\1/p' "$out")"
}

# --- 6: idle memory ----------------------------------------------------------------
# Fresh system, one request on each port to warm it up, Pss of its process
# tree; then $IDLE_CONNS connections that each do one GET /1k and sit idle
# (from 50 source addresses, so no per-IP limit or port range is in the way);
# Pss again. Growth / connections = bytes per idle connection. The system is
# restarted between plain and TLS so each starts from the same state.
# measure_idle SYS CONNLOAD_FLAGS METRIC [SCENARIO [CONNS]] (scenario 11
# holds HTTP/2 connections: flags "-t -2").
measure_idle() {
    local sys=$1 tls=$2 metric=$3 scen=${4:-6} nconns=${5:-$IDLE_CONNS}
    local out=$WORK/hold.out before after held pids hold_pid i
    pids=$(sys_pids)
    sleep 0.3
    before=$(pss_kb $pids)
    taskset -c "$LOAD_CPU" "$WORK/connload" -m hold $tls -p "$HTTPS_OR_HTTP" \
        -n "$nconns" -c 200 -s 50 -d 30 -w 120 > "$out" 2>&1 &
    hold_pid=$!
    register_child "$hold_pid"
    for i in $(seq 900); do                       # at most 90 s to open them all
        grep -q '^ready' "$out" && break
        kill -0 "$hold_pid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 0.7                                      # let the system settle
    pids=$(sys_pids)
    after=$(pss_kb $pids)
    held=$(sed -n 's/^ready held=\([0-9]*\).*/\1/p' "$out")
    stop_pid "$hold_pid"
    if [ -z "$held" ] || [ "$held" -lt $(( nconns * 99 / 100 )) ]; then
        note "$scen" "$sys" "$metric: held ${held:-0} of $nconns: $(head -n1 "$out" | cut -c1-200)"
        record "$scen" "$metric" "$sys" ""; return 1
    fi
    record "$scen" "$metric" "$sys" "$(awk -v a="$after" -v b="$before" -v n="$held" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')"
    record "$scen" "${metric}_pss_mb" "$sys" "$(awk -v a="$after" 'BEGIN {printf "%.1f", a / 1024}')"
}

scenario_6() {
    local sys=$1
    HTTPS_OR_HTTP=$HTTP_PORT measure_idle "$sys" "" bytes_per_conn_plain
    stop_system
    if ! start_system "$sys" 6; then
        note 6 "$sys" "restart for TLS failed: $SYS_FAIL"
        record 6 bytes_per_conn_tls "$sys" ""; return 1
    fi
    HTTPS_OR_HTTP=$HTTPS_PORT measure_idle "$sys" -t bytes_per_conn_tls
}

# --- 7, 8: rate limiting ------------------------------------------------------------
scenario_7() { run_wrk 7 "$1" "http://127.0.0.1:$HTTP_PORT/1k"; }

# Redis work per proxied request, as deltas over the measured wrk run:
# - round trips: Redis' total_reads_processed (each read event on the server
#   is one exchange with a client; pipelined commands arrive in one read),
#   less our own INFO calls;
# - EVALSHA calls (one per request's decision);
# - commands, from commandstats, where Redis also counts the TIME/GET/SET a
#   script runs.
# REDIS_PORTS names the servers counted (scenario 8: the one Redis; 18: the
# cluster's three primaries, summed).
REDIS_PORTS=$REDIS_PORT
redis_sum_stat() {
    local field=$1 p
    for p in $REDIS_PORTS; do
        redis-cli -p "$p" INFO stats 2>/dev/null | tr -d '\r' | awk -F: -v f="$field" '$1 == f {print $2}'
    done | awk '{ s += $1 } END { print s + 0 }'
}
redis_total_cmds() { redis_sum_stat total_commands_processed; }
redis_total_reads() { redis_sum_stat total_reads_processed; }
# "name calls" per command, INFO excluded, for the per-command breakdown.
redis_calls_by_cmd() {
    local p
    for p in $REDIS_PORTS; do
        redis-cli -p "$p" INFO commandstats 2>/dev/null | tr -d '\r' | awk -F'[:=,]' '
            /^cmdstat_/ && $1 != "cmdstat_info" { sub("cmdstat_", "", $1); print $1, $3 }'
    done | awk '{ n[$1] += $2 } END { for (c in n) print c, n[c] }'
}
REDIS_C0=0 REDIS_T0=0 REDIS_R0=0 REDIS_BY_CMD0=""
redis_mark() {
    REDIS_BY_CMD0=$(redis_calls_by_cmd)
    REDIS_C0=$(awk '{ s += $2 } END { print s + 0 }' <<< "$REDIS_BY_CMD0")
    REDIS_T0=$(redis_total_cmds)
    REDIS_R0=$(redis_total_reads)
}

# Scenario $1's run through the Redis servers REDIS_PORTS, and its Redis
# figures per request.
redis_scenario() {
    local scen=$1 sys=$2 c1 p n
    for p in $REDIS_PORTS; do
        if ! redis-cli -p "$p" PING > /dev/null 2>&1; then
            note "$scen" "$sys" "redis-server not answering on :$p"
            record "$scen" rps "$sys" ""; return 1
        fi
    done
    BEFORE_RUN=redis_mark run_wrk "$scen" "$sys" "http://127.0.0.1:$HTTP_PORT/1k" || return 1
    local by1 r1
    r1=$(redis_total_reads)
    by1=$(redis_calls_by_cmd)
    c1=$(awk '{ s += $2 } END { print s + 0 }' <<< "$by1")
    # Which commands, per request: tells the tollgate developers what to batch.
    note "$scen" "$sys" "Redis commands per request: $( { sed 's/^/B /' <<< "$REDIS_BY_CMD0"; sed 's/^/A /' <<< "$by1"; } |
        awk -v n="$WRK_REQUESTS" '$1 == "B" { before[$2] = $3; next }
            { d = $3 - before[$2]; if (d / n >= 0.005) printf "%s %.2f  ", $2, d / n }')"
    record "$scen" redis_cmds_per_req "$sys" "$(awk -v d=$((c1 - REDIS_C0)) -v n="$WRK_REQUESTS" 'BEGIN {printf "%.3f", d / n}')"
    # the two INFO calls between the readings each cost one read, per server
    n=$(wc -w <<< "$REDIS_PORTS")
    record "$scen" redis_trips_per_req "$sys" "$(awk -v d=$((r1 - REDIS_R0 - 2 * n)) -v n="$WRK_REQUESTS" 'BEGIN {printf "%.3f", d / n}')"
    record "$scen" redis_evalsha_per_req "$sys" "$( { sed 's/^/B /' <<< "$REDIS_BY_CMD0"; sed 's/^/A /' <<< "$by1"; } |
        awk -v n="$WRK_REQUESTS" '$1 == "B" { before[$2] = $3; next } $2 == "evalsha" { printf "%.3f", ($3 - before[$2]) / n }')"
}

scenario_8() { REDIS_PORTS=$REDIS_PORT redis_scenario 8 "$1"; }

# --- 18: rate limiting through a Redis Cluster ------------------------------------
# Scenario 8 on three primaries (bench/run's start_cluster). The policy's
# key is the client address, the same for every request: one slot, so one
# primary does the work, as a hot key would; the figures sum all three.
scenario_18() {
    local sys=$1
    if [ "$CLUSTER_UP" != 1 ]; then
        note 18 "$sys" "the Redis Cluster did not start (see bench/work/cluster-*.log)"
        record 18 rps "$sys" ""; return 1
    fi
    REDIS_PORTS=$CLUSTER_PORTS redis_scenario 18 "$sys"
}

# --- 9: large bodies ------------------------------------------------------------------
scenario_9() {
    local sys=$1 port=$HTTP_PORT dir out=$WORK/bulk.out
    [ "$sys" = direct ] && port=$BACKEND_PORT
    for dir in up down; do
        if on_load 150 "$WORK/bulk" "$dir" 127.0.0.1 "$port" "$BIG_BYTES" > "$out" 2>&1; then
            record 9 "${dir}_mbps" "$sys" "$(sed -n 's/.*mbps=\([0-9.]*\).*/\1/p' "$out")"
        else
            note 9 "$sys" "$dir failed: $(tr '\n' ' ' < "$out" | cut -c1-200)"
            record 9 "${dir}_mbps" "$sys" ""
        fi
    done
}

# --- 10: many tenants --------------------------------------------------------------------
# wrk with a Lua script that sets Host t1..tN.bench.test round-robin.
# The requests are formatted once in init(), so the per-request Lua cost is a
# table lookup; the direct column shows what wrk + backend can do with it.
# write_tenants_lua N FILE
write_tenants_lua() {
    cat > "$2" <<LUA
local n, N, reqs = 0, $1, {}
init = function(args)
    for i = 1, N do
        reqs[i] = wrk.format("GET", "/1k", { ["Host"] = "t" .. i .. ".bench.test" })
    end
end
request = function()
    n = n % N + 1
    return reqs[n]
end
LUA
}

scenario_10() {
    local port=$HTTP_PORT
    [ "$1" = direct ] && port=$BACKEND_PORT
    run_wrk 10 "$1" "http://127.0.0.1:$port/1k" -s "$WORK/tenants.lua"
}

# --- 15, 16, 17: what observability costs ----------------------------------------------------
# 15 and 16: $METRICS_TENANTS tenants by Host, round-robin (every tenant
# new to the per-tenant table as often as it can be: its worst case).
# 15 with per-tenant metrics off (admin.tenant_series: 0), 16 with them on
# (the default 500) and tracing on as shipped (sample_ratio 0.01, spans
# sent to the backend's /v1/traces). After 16's run, /metrics is scraped 20
# times: the median time and the page's size at that many tenants.
# 17: scenario 1 with every request traced, against scenario 1.
scenario_15() {
    run_wrk 15 "$1" "http://127.0.0.1:$HTTP_PORT/1k" -s "$WORK/tenants-metrics.lua" || return
    record_cpu_per_req 15 "$1" "$WRK_RPS"
}

scenario_16() {
    run_wrk 16 "$1" "http://127.0.0.1:$HTTP_PORT/1k" -s "$WORK/tenants-metrics.lua" || return
    record_cpu_per_req 16 "$1" "$WRK_RPS"
    local i t bytes times=()
    for i in $(seq 20); do
        read -r t bytes < <(on_load 20 curl -s -o /dev/null -w '%{time_total} %{size_download}\n' \
            "http://127.0.0.1:$ADMIN_PORT/metrics")
        times+=("$t")
    done
    record 16 scrape_us "$1" "$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR) printf "%.0f", v[int((NR + 1) / 2)] * 1e6 }')"
    record 16 scrape_bytes "$1" "$bytes"
}

scenario_17() {
    run_wrk 17 "$1" "http://127.0.0.1:$HTTP_PORT/1k" || return
    record_cpu_per_req 17 "$1" "$WRK_RPS"
}

# --- 11: HTTP/2 over TLS -------------------------------------------------------------
# h2load (nghttp2-client): $CONNS connections x $H2_STREAMS concurrent streams
# each, GET /1k over TLS with ALPN h2, for $SECONDS_PER_RUN s after a warm-up
# run. h2load prints no percentiles: its mean and max time per request are
# recorded. Then, on a fresh system (as in scenario 6), $H2_IDLE_CONNS
# HTTP/2 connections (connload -t -2) each do the SETTINGS exchange and one
# GET /1k and sit idle: growth of Pss / connections.
run_h2load() {
    local scen=$1 sys=$2 url=$3 out=$WORK/h2load.out
    if [ "$WARMUP" -gt 0 ]; then
        on_load $((WARMUP + 15)) h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$WARMUP" "$url" \
            > /dev/null 2>&1
    fi
    measure_begin
    on_load $((SECONDS_PER_RUN + 20)) h2load -t1 -c"$CONNS" -m"$H2_STREAMS" \
        -D"$SECONDS_PER_RUN" "$url" > "$out" 2>&1
    local rc=$?
    measure_end "$scen" "$sys"
    # finished in 3.00s, 41234.33 req/s, 45.12MB/s
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    # status codes: N 2xx, N 3xx, N 4xx, N 5xx
    # time for request:   min   max   mean   sd   +/- sd
    local rps total ok failed errored tmo non2xx mean max proto
    rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out")
    read -r total ok failed errored tmo < <(awk '/^requests:/ {
        gsub(",", ""); print $2, $8, $10, $12, $14 }' "$out")
    non2xx=$(awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }' "$out")
    mean=$(awk '/^time for request:/ {print $6}' "$out")
    max=$(awk '/^time for request:/ {print $5}' "$out")
    proto=$(sed -n 's/^Application protocol: *//p' "$out")
    if [ "$rc" != 0 ] || [ -z "$rps" ] || [ "${ok:-0}" = 0 ]; then
        note "$scen" "$sys" "h2load failed (rc $rc): $(tr '\n' ' ' < "$out" | cut -c1-200)"
        record "$scen" rps "$sys" ""; return 1
    fi
    if [ "$proto" != h2 ]; then
        note "$scen" "$sys" "h2load spoke '${proto:-?}', not h2: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    if [ "${non2xx:-0}" -gt 0 ]; then
        note "$scen" "$sys" "$non2xx of $total responses were not 2xx: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    if [ $(( failed + errored + tmo )) -gt $(( total / 1000 )) ]; then
        note "$scen" "$sys" "h2load: $failed failed, $errored errored, $tmo timed out of $total: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    record "$scen" rps "$sys" "$rps"
    record "$scen" rps_per_cpu "$sys" "$(awk -v r="$rps" -v c="$MEASURED_CPU" 'BEGIN { if (c > 0) printf "%.1f", r / (c / 100) }')"
    record_cpu_per_req "$scen" "$sys" "$rps"
    record "$scen" mean_us "$sys" "$(to_us "$mean")"
    record "$scen" max_us "$sys" "$(to_us "$max")"
}

scenario_11() {
    local sys=$1
    run_h2load 11 "$sys" "https://127.0.0.1:$HTTPS_PORT/1k"
    stop_system
    if ! start_system "$sys" 11; then
        note 11 "$sys" "restart for idle HTTP/2 failed: $SYS_FAIL"
        record 11 bytes_per_conn_h2 "$sys" ""; return 1
    fi
    HTTPS_OR_HTTP=$HTTPS_PORT measure_idle "$sys" "-t -2" bytes_per_conn_h2 11 "$H2_IDLE_CONNS"
}

# --- 12, 13: gzip ------------------------------------------------------------------
# wrk with Accept-Encoding: gzip for /json10k (10 KiB of JSON): the system
# compresses every response (level 1 in 12, level 6 in 13). First one curl
# checks that the answer is really gzip and records its size.
run_gzip() {
    local scen=$1 sys=$2 got size enc
    got=$(on_load 10 curl -s -o /dev/null -H 'Accept-Encoding: gzip' \
        -w '%{size_download} %header{content-encoding}' "http://127.0.0.1:$HTTP_PORT/json10k")
    read -r size enc <<< "$got"
    if [ "$enc" != gzip ]; then
        note "$scen" "$sys" "/json10k came back with Content-Encoding '${enc:-none}', not gzip: not counted"
        record "$scen" rps "$sys" ""; return 1
    fi
    record "$scen" resp_bytes "$sys" "$size"
    run_wrk "$scen" "$sys" "http://127.0.0.1:$HTTP_PORT/json10k" -H 'Accept-Encoding: gzip' || return 1
    record_cpu_per_req "$scen" "$sys" "$WRK_RPS"
}
scenario_12() { run_gzip 12 "$1"; }
scenario_13() { run_gzip 13 "$1"; }

# --- 14: cache hits ----------------------------------------------------------------
# wrk over /files/1 .. /files/100 (8 KiB each, max-age=86400): after the
# warm-up every request is a hit in the system's cache. A curl pair first
# checks that the second answer is a hit where the system says so
# (X-Cache: HIT from nginx and tollgate; haproxy sends no such field).
write_files_lua() {
    cat > "$WORK/files.lua" <<LUA
local n, N, reqs = 0, 100, {}
init = function(args)
    for i = 1, N do reqs[i] = wrk.format("GET", "/files/" .. i .. ".webp") end
end
request = function()
    n = n % N + 1
    return reqs[n]
end
LUA
}

scenario_14() {
    local sys=$1 hit
    on_load 10 curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/files/check.webp"
    hit=$(on_load 10 curl -s -o /dev/null -w '%header{x-cache}' "http://127.0.0.1:$HTTP_PORT/files/check.webp")
    if [ "$sys" != haproxy ] && [ "${hit^^}" != HIT ]; then
        note 14 "$sys" "the second GET of a file was not a cache hit (X-Cache '${hit:-none}'): not counted"
        record 14 rps "$sys" ""; return 1
    fi
    run_wrk 14 "$sys" "http://127.0.0.1:$HTTP_PORT/files/1.webp" -s "$WORK/files.lua" || return 1
    record_cpu_per_req 14 "$sys" "$WRK_RPS"
}
