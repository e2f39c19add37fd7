# bench/lib/common.sh — logging, child processes, /proc accounting, results.
# Sourced by bench/run; expects WORK, LOAD_CPU, PROXY_CPU to be set.

log()  { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '%s WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- child processes --------------------------------------------------------
# Every long-lived child is registered here; cleanup() (trapped on EXIT, INT
# and TERM) stops them all, whatever way the run ends.
CHILD_PIDS=()

# Pids also go to $WORK/pids, so a run that was killed outright (SIGKILL,
# lost terminal) is cleaned up by the next one: see reap_stale_children.
register_child() { CHILD_PIDS+=("$1"); echo "$1" >> "$WORK/pids"; }

# Stops processes a previous, killed run left behind: only pids from its
# pid file whose command line names our work directory (every process the
# bench starts has $WORK in its arguments) or that run in it (redis-server
# rewrites its title but chdirs to --dir), so a reused pid is left alone.
reap_stale_children() {
    local pid
    [ -f "$WORK/pids" ] || return 0
    while read -r pid; do
        [ -n "$pid" ] && [ "$pid" != $$ ] || continue
        if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$WORK" ||
           [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$WORK" ]; then
            warn "stopping pid $pid left over from an earlier run"
            kill -TERM "$pid" 2>/dev/null
        fi
    done < "$WORK/pids"
    sleep 0.5
    : > "$WORK/pids"
}

# Stops one process by pid: SIGTERM, up to 5 s of grace, then SIGKILL.
stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "pid $pid ignored SIGTERM for 5 s; killing it and its children"
        kill -KILL $(tree_pids "$pid") 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local pid
    trap - EXIT INT TERM
    [ -e /proc/$$/fd/9 ] && exec 2>&9     # the real stderr (see bench/run)
    for pid in "${CHILD_PIDS[@]}"; do stop_pid "$pid"; done
}

# Waits until TCP port $1 on 127.0.0.1 is free (no listener), at most 5 s.
wait_port_free() {
    local port=$1 i
    for i in $(seq 100); do
        ss -Hltn "sport = :$port" 2>/dev/null | grep -q . || return 0
        sleep 0.05
    done
    return 1
}

# --- /proc accounting ---------------------------------------------------------
# All pids of a process tree rooted at $1 (an nginx master and its workers).
tree_pids() {
    local pid=$1 kid
    [ -d "/proc/$pid" ] || return 0
    echo "$pid"
    for kid in $(ps -o pid= --ppid "$pid" 2>/dev/null); do tree_pids "$kid"; done
}

# Sum of user+system CPU ticks of the given pids.
cpu_ticks() {
    local total=0 pid line f
    for pid in "$@"; do
        read -r line < "/proc/$pid/stat" 2>/dev/null || continue
        line=${line##*) }             # fields after "(comm) "
        read -r -a f <<< "$line"      # f[0] is field 3 (state)
        total=$(( total + f[11] + f[12] ))   # utime (14), stime (15)
    done
    echo "$total"
}

# Sum of proportional set size (kB) of the given pids: shared pages (an
# nginx master's and worker's common text) are counted once.
pss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}

# "busy total" ticks of one core from /proc/stat: busy counts user, nice,
# system and steal (another VM's use of our core), not irq/softirq (the
# kernel's network work done on behalf of whoever runs there).
core_ticks() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

# Percent of core $1 that was busy over $2 seconds (a quick look at whether
# anything else is running on this machine).
core_busy_pct() {
    local b0 t0 b1 t1
    read -r b0 t0 < <(core_ticks "$1")
    sleep "$2"
    read -r b1 t1 < <(core_ticks "$1")
    awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.0f", (t > 0 ? b / t * 100 : 0) }'
}

CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }

# --- results --------------------------------------------------------------------
# results.tsv: round, scenario, metric, system, value ("" = failed / n/a).
# notes.tsv:   round, scenario, system, free text (why something failed,
#              reuse counts, load-generator errors...).
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" "$4" >> "$WORK/results.tsv"; }
note()   { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" >> "$WORK/notes.tsv"; log "  note [$1 $2]: $3"; }

# Runs a command on the load core with a time limit: on_load SECONDS cmd...
on_load() { local t=$1; shift; timeout -k 2 "$t" taskset -c "$LOAD_CPU" "$@"; }
