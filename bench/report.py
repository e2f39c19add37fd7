#!/usr/bin/python3
"""bench/report.py WORK_DIR OUT_MD — turn bench/run's raw results into the table.

Reads WORK_DIR/results.tsv (round, scenario, metric, system, value),
WORK_DIR/notes.tsv and WORK_DIR/meta.env; prints the report (Markdown) to
stdout and writes it to OUT_MD. Each cell is the median over rounds with the
min-max range; ratios and targets compare medians from this run only.
Standard library only.
"""
import statistics
import sys
from collections import defaultdict

SYSTEMS = ["direct", "nginx", "haproxy", "tollgate"]
PEERS = ["nginx", "haproxy"]


def load(work):
    meta = {}
    with open(f"{work}/meta.env") as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    # values[(scen, metric, system)] = {round: value}
    values = defaultdict(dict)
    with open(f"{work}/results.tsv") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            rnd, scen, metric, system, value = parts
            if value != "":
                values[(int(scen), metric, system)][int(rnd)] = float(value)
            else:
                values[(int(scen), metric, system)].setdefault(int(rnd), None)
    notes = []
    with open(f"{work}/notes.tsv") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                notes.append((int(parts[1]), parts[2], parts[3], parts[0]))
    return meta, values, notes


def derive(values):
    """Scenario 5: delay added by the proxy = its delay - the direct run's
    median delay in the same round. Scenario 18: its req/s over scenario
    8's in the same round (a cluster beside one Redis)."""
    single = values.get((8, "rps", "tollgate"), {})
    for rnd, v in values.get((18, "rps", "tollgate"), {}).items():
        s8 = single.get(rnd)
        if v is not None and s8:
            values[(18, "vs_8", "tollgate")][rnd] = v / s8
    direct = values.get((5, "delay_median_us", "direct"), {})
    for system in SYSTEMS[1:]:
        for metric, derived in (("delay_median_us", "added_median_us"),
                                ("delay_max_us", "added_max_us"),
                                ("h2_delay_median_us", "h2_added_median_us"),
                                ("h2_delay_max_us", "h2_added_max_us")):
            for rnd, v in values.get((5, metric, system), {}).items():
                d = direct.get(rnd)
                if v is not None and d is not None:
                    values[(5, derived, system)][rnd] = v - d


def stats(values, scen, metric, system):
    vs = [v for v in values.get((scen, metric, system), {}).values() if v is not None]
    if not vs:
        return None
    return statistics.median(vs), min(vs), max(vs), len(vs)


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "rps":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:,.0f}"
    if unit == "us":
        return f"{v / 1000:.2f} ms" if abs(v) >= 1000 else f"{v:.0f} µs"
    if unit == "bytes":
        return f"{v:,.0f} B"
    if unit == "pct":
        return f"{v:.0f}%"
    if unit == "ratio":
        return f"{v:.2f}"
    return f"{v:,.0f}"


def cell(st, unit):
    if st is None:
        return "n/a"
    med, lo, hi, n = st
    if n == 1 or lo == hi:
        return fmt(med, unit)
    if unit == "us" and max(abs(lo), abs(hi)) >= 1000:
        return f"{med / 1000:.2f} ms [{lo / 1000:.2f}–{hi / 1000:.2f}]"
    return f"{fmt(med, unit)} [{fmt(lo, unit).split(' ')[0]}–{fmt(hi, unit).split(' ')[0]}]"


# --- targets -------------------------------------------------------------------
# Each returns (description, verdict) with verdict PASS / MISS / n/a.
def med(values, scen, metric, system):
    st = stats(values, scen, metric, system)
    return None if st is None else st[0]


def verdict(ok):
    return "PASS" if ok else "MISS"


def t_faster(k_nginx, k_haproxy):
    def f(values, scen, metric):
        desc = f"≥ {k_nginx:.2f}× nginx and ≥ {k_haproxy:.2f}× haproxy"
        tg, ng, hp = (med(values, scen, metric, s) for s in ("tollgate", "nginx", "haproxy"))
        if None in (tg, ng, hp):
            return desc, "n/a"
        return desc, verdict(tg >= k_nginx * ng and tg >= k_haproxy * hp)
    return f


def t_lat_best(values, scen, metric):
    desc = "≤ the better of nginx, haproxy"
    tg, ng, hp = (med(values, scen, metric, s) for s in ("tollgate", "nginx", "haproxy"))
    if None in (tg, ng, hp):
        return desc, "n/a"
    return desc, verdict(tg <= min(ng, hp))


def t_best_peer(values, scen, metric):
    desc = "≥ 1.00× the better of nginx, haproxy"
    tg, ng, hp = (med(values, scen, metric, s) for s in ("tollgate", "nginx", "haproxy"))
    if None in (tg, ng, hp):
        return desc, "n/a"
    return desc, verdict(tg >= max(ng, hp))


def t_best_peer_by(k):
    def f(values, scen, metric):
        desc = f"≥ {k:.2f}× the better of nginx, haproxy"
        tg, ng, hp = (med(values, scen, metric, s) for s in ("tollgate", "nginx", "haproxy"))
        if None in (tg, ng, hp):
            return desc, "n/a"
        return desc, verdict(tg >= k * max(ng, hp))
    return f


def t_vs_row(other, slack):
    """tollgate's figure at most `slack` times its own figure in another row
    of the same scenario."""
    def f(values, scen, metric):
        desc = "≤ tollgate's HTTP/1.1 figure" if slack == 1 else f"≤ {slack:.2f}× tollgate's HTTP/1.1 figure"
        tg, ref = med(values, scen, metric, "tollgate"), med(values, scen, other, "tollgate")
        if None in (tg, ref):
            return desc, "n/a"
        return desc, verdict(tg <= slack * ref)
    return f


def t_below(limit, unit_desc):
    def f(values, scen, metric):
        desc = f"< {unit_desc}"
        tg = med(values, scen, metric, "tollgate")
        if tg is None:
            return desc, "n/a"
        return desc, verdict(tg < limit)
    return f


def t_redis_used(values, scen, metric):
    """Fewer than one Redis round trip per request (pipelining), but some:
    zero means the Redis store was not exercised at all (a fallback or a
    wrong config)."""
    desc = "< 1, and > 0 (Redis in use)"
    tg = med(values, scen, metric, "tollgate")
    if tg is None:
        return desc, "n/a"
    return desc, verdict(0 < tg < 1)


def t_at_least(limit, unit_desc):
    def f(values, scen, metric):
        desc = f"≥ {unit_desc}"
        tg = med(values, scen, metric, "tollgate")
        if tg is None:
            return desc, "n/a"
        return desc, verdict(tg >= limit)
    return f


def t_vs_nginx(k, cmp):
    def f(values, scen, metric):
        desc = f"{'≤' if cmp == 'le' else '≥'} {k:.2f}× nginx"
        tg, ng = med(values, scen, metric, "tollgate"), med(values, scen, metric, "nginx")
        if None in (tg, ng):
            return desc, "n/a"
        return desc, verdict(tg <= k * ng if cmp == "le" else tg >= k * ng)
    return f


def t_vs_scenario(other, k):
    def f(values, scen, metric):
        desc = f"≥ {k:.2f}× tollgate's scenario {other}"
        tg, ref = med(values, scen, metric, "tollgate"), med(values, other, metric, "tollgate")
        if None in (tg, ref):
            return desc, "n/a"
        return desc, verdict(tg >= k * ref)
    return f


# (scenario, metric, label, unit, target or None)
ROWS = [
    (1, "rps", "req/s", "rps", t_faster(1.30, 1.15)),
    (1, "p50_us", "p50 latency", "us", None),
    (1, "p99_us", "p99 latency", "us", t_lat_best),
    (1, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (1, "cpu_us_per_req", "CPU per request (µs of the system)", "us", None),
    (2, "rps", "req/s", "rps", t_faster(1.30, 1.15)),
    (2, "p50_us", "p50 latency", "us", None),
    (2, "p99_us", "p99 latency", "us", t_lat_best),
    (2, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (3, "hs_rate", "handshakes/s", "n", None),
    (3, "hs_per_cpu", "handshakes per proxy CPU-second", "n", t_best_peer),
    (3, "resumed_pct", "resumed (must be 0)", "pct", None),
    (4, "hs_rate", "handshakes/s", "n", None),
    (4, "hs_per_cpu", "handshakes per proxy CPU-second", "n", t_best_peer),
    (4, "resumed_pct", "resumed (verified per handshake)", "pct", t_at_least(99, "99% resumed")),
    (5, "delay_median_us", "median delay (backend → client)", "us", None),
    (5, "added_median_us", "median added delay (vs direct)", "us", t_below(1000, "1 ms")),
    (5, "delay_max_us", "max delay", "us", None),
    (5, "added_max_us", "max added delay (vs direct median)", "us", t_below(5000, "5 ms")),
    (5, "h2_added_median_us", "HTTP/2 (h2c): median added delay", "us", t_vs_row("added_median_us", 1.00)),
    (5, "h2_added_max_us", "HTTP/2 (h2c): max added delay", "us", t_below(5000, "5 ms")),
    (6, "bytes_per_conn_plain", "bytes per idle conn, plain", "bytes", t_vs_nginx(0.5, "le")),
    (6, "bytes_per_conn_tls", "bytes per idle conn, TLS", "bytes", t_vs_nginx(0.5, "le")),
    (7, "rps", "req/s", "rps", t_vs_scenario(1, 0.97)),
    (7, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (8, "rps", "req/s", "rps", t_vs_scenario(7, 0.70)),
    (8, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (8, "redis_trips_per_req", "Redis round trips per request (server reads)", "ratio", t_redis_used),
    (8, "redis_evalsha_per_req", "EVALSHA per request", "ratio", None),
    (8, "redis_cmds_per_req", "Redis commands per request, script internals included (commandstats)", "ratio", None),
    # 18 beside 8: the same on a cluster.
    (18, "rps", "req/s", "rps", t_vs_scenario(7, 0.70)),
    (18, "vs_8", "req/s ÷ scenario 8's (one Redis), same round", "ratio", None),
    (18, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (18, "redis_trips_per_req", "Redis round trips per request (server reads, 3 nodes)", "ratio",
     t_redis_used),
    (18, "redis_evalsha_per_req", "EVALSHA per request", "ratio", None),
    (18, "redis_cmds_per_req", "Redis commands per request, script internals included "
     "(commandstats, 3 nodes)", "ratio", None),
    (9, "up_mbps", "upload MB/s", "n", t_vs_nginx(1.0, "ge")),
    (9, "down_mbps", "download MB/s", "n", t_vs_nginx(1.0, "ge")),
    (10, "rps", "req/s", "rps", t_vs_scenario(1, 0.90)),
    (10, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (11, "rps", "req/s", "rps", t_best_peer_by(1.15)),
    (11, "mean_us", "mean time per request (h2load: no percentiles)", "us", None),
    (11, "max_us", "max time per request", "us", None),
    (11, "rps_per_cpu", "req per CPU-second of the system", "rps", None),
    (11, "cpu_us_per_req", "CPU per request (µs of the system)", "us", t_lat_best),
    (11, "bytes_per_conn_h2", "bytes per idle HTTP/2 conn (TLS, after SETTINGS and one GET)",
     "bytes", None),
    (12, "rps", "req/s", "rps", t_vs_nginx(1.0, "ge")),
    (12, "cpu_us_per_req", "CPU per request (µs of the system)", "us", t_vs_nginx(1.0, "le")),
    (12, "resp_bytes", "bytes per response (gzip)", "bytes", None),
    (13, "rps", "req/s", "rps", t_vs_nginx(1.0, "ge")),
    (13, "cpu_us_per_req", "CPU per request (µs of the system)", "us", t_vs_nginx(1.0, "le")),
    (13, "resp_bytes", "bytes per response (gzip)", "bytes", None),
    (14, "rps", "req/s", "rps", t_vs_nginx(1.0, "ge")),
    (14, "cpu_us_per_req", "CPU per request (µs of the system)", "us", t_vs_nginx(1.0, "le")),
    (15, "rps", "req/s", "rps", None),
    (15, "cpu_us_per_req", "CPU per request (µs of the system)", "us", None),
    (16, "rps", "req/s", "rps", t_vs_scenario(15, 0.95)),
    (16, "cpu_us_per_req", "CPU per request (µs of the system)", "us", None),
    (16, "scrape_us", "/metrics scrape time (median of 20)", "us", None),
    (16, "scrape_bytes", "/metrics page size", "bytes", None),
    (17, "rps", "req/s", "rps", t_vs_scenario(1, 0.95)),
    (17, "cpu_us_per_req", "CPU per request (µs of the system)", "us", None),
]


def applies(system, scen, metric):
    """Mirrors applies() in lib/systems.sh: the backend speaks plain HTTP
    only and has no rate limiter; only tollgate has a Redis-backed limiter.
    Anything else that has no value is n/a (not built, failed, skipped)."""
    if system == "direct":
        return scen in (1, 5, 9, 10) and not metric.startswith(("added_", "h2_"))  # not 11: TLS
    if system in ("nginx", "haproxy"):
        return scen not in (8, 15, 16, 17, 18)
    return True


def titles(meta):
    big = int(meta.get("big_bytes", 0))
    big_s = f"{big / 2**30:g} GiB" if big >= 2**30 else f"{big / 2**20:g} MiB"
    return {
        1: f"HTTP/1.1 keep-alive, 1 KiB, {meta['conns']} conns",
        2: f"HTTPS keep-alive, 1 KiB, {meta['conns']} conns",
        3: "HTTPS, full handshake per request (ECDSA P-256)",
        4: "HTTPS, resumed handshake per request (tickets)",
        5: f"SSE, {meta['sse_events']} events {meta['sse_interval_ms']} ms apart",
        6: f"{meta['idle_conns']} idle keep-alive conns, memory",
        7: "rate limit on every request, local store",
        8: "rate limit on every request, Redis store",
        9: f"{big_s} body through the proxy",
        10: f"{meta['tenants']} tenants by Host",
        11: f"HTTP/2 over TLS, 1 KiB, {meta['conns']} conns × {meta.get('h2_streams', '?')} "
            f"streams; {meta.get('h2_idle_conns', '?')} idle h2 conns",
        12: f"gzip level 1, 10 KiB JSON, {meta['conns']} conns",
        13: f"gzip level 6, 10 KiB JSON, {meta['conns']} conns",
        14: f"cache hits, 100 files of 8 KiB, {meta['conns']} conns",
        15: f"{meta.get('metrics_tenants', '?')} tenants by Host, per-tenant metrics off",
        16: f"{meta.get('metrics_tenants', '?')} tenants by Host, per-tenant metrics on, "
            "tracing on (1% sampled, the default)",
        17: "scenario 1 with every request traced",
        18: "rate limit on every request, Redis Cluster (3 primaries)",
    }


def render(meta, values, notes):
    derive(values)
    scens = [int(s) for s in meta["scenarios"].split()]
    systems = [s for s in SYSTEMS if s in meta["systems"].split()]
    title = titles(meta)
    out = []
    w = out.append
    w("# tollgate benchmark")
    w("")
    w(f"- date: {meta['date']}")
    w(f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}")
    w(f"- versions: nginx {meta['nginx']}, haproxy {meta['haproxy']}, "
      f"openssl {meta['openssl']}, wrk {meta['wrk']}, "
      + (f"h2load {meta['h2load']}, " if meta.get("h2load") else "")
      + f"redis {meta['redis']}, "
      f"tollgate: {meta['tollgate']}")
    w(f"- run: {meta.get('rounds_done', '?')} of {meta['rounds']} round(s), "
      f"{meta['seconds']} s per measured run after {meta['warmup']} s warm-up, "
      f"systems interleaved within each round; proxy on core {meta['proxy_cpu']}, "
      f"load generators + backend + redis on core {meta['load_cpu']}; "
      f"total {meta.get('total_seconds', '?')} s"
      + ("; QUICK MODE (smoke test, not a measurement)" if meta.get("quick") == "1" else ""))
    w(f"- other load before the start: {meta.get('busy_at_start', '?')} busy "
      f"(anything above a few % disturbs the numbers); open files limit {meta.get('nofile', '?')}")
    if meta.get("skipped_runs", "0") != "0":
        w(f"- **{meta['skipped_runs']} runs skipped: the time budget ran out**")
    w("- cells: median over rounds [min–max]; ratios compare medians; "
      "PASS/MISS only when tollgate and the references were measured")
    w("- SSE settings: nginx has `proxy_buffering off` for /sse (it buffers "
      "otherwise) and haproxy `option http-no-delay` in scenario 5 (else it "
      "sends with MSG_MORE and events wait up to 200 ms); tollgate needs no setting")
    w("")
    head = ["#", "metric"] + systems + ["tg/nginx", "tg/haproxy", "tg/direct", "target", "result"]
    w("| " + " | ".join(head) + " |")
    w("|" + "|".join(["---"] * len(head)) + "|")
    last = None
    for scen, metric, label, unit, target in ROWS:
        if scen not in scens:
            continue
        row = [str(scen) if scen != last else "",
               (f"**{title[scen]}**: " if scen != last else "") + label]
        last = scen
        for s in systems:
            if not applies(s, scen, metric):
                row.append("—")
            else:
                row.append(cell(stats(values, scen, metric, s), unit))
        tg = med(values, scen, metric, "tollgate")
        for ref in ("nginx", "haproxy", "direct"):
            r = med(values, scen, metric, ref)
            row.append(f"{tg / r:.2f}×" if tg is not None and r not in (None, 0) else "n/a")
        if target:
            desc, v = target(values, scen, metric)
            row += [desc, f"**{v}**" if v in ("PASS", "MISS") else v]
        else:
            row += ["", ""]
        w("| " + " | ".join(row) + " |")
    w("")
    w("— = not applicable (the backend speaks plain HTTP only and has no rate "
      "limiter; only tollgate has a Redis-backed limiter); n/a = not measured or failed "
      "(see notes).")
    if meta.get("tollgate_present") != "1":
        w(f"tollgate: no binary at `{meta['tollgate_bin']}`, so its column is n/a.")
    # CPU use: was the proxy the bottleneck, and was anything else running?
    cpu_scens = [s for s in scens if any(values.get((s, "cpu", x)) for x in systems)]
    if cpu_scens:
        w("")
        w("CPU during the measured runs, % of one core: **system under test** / backend / "
          f"load core {meta['load_cpu']} in all (client + backend + anything else) / other "
          f"processes on core {meta['proxy_cpu']} (should be ~0). A system well below 100% "
          "with the load core near 100% was held back by the client side; for direct, "
          "the first figure is the backend.")
        w("")
        w("| # | " + " | ".join(systems) + " |")
        w("|" + "|".join(["---"] * (len(systems) + 1)) + "|")
        for s in cpu_scens:
            row = [str(s)]
            for x in systems:
                c, b, l, o = (med(values, s, m, x)
                              for m in ("cpu", "backend_cpu", "load_core", "core_other"))
                if c is None:
                    row.append("n/a" if applies(x, s, "cpu") else "—")
                else:
                    row.append(f"**{c:.0f}** / " + " / ".join(
                        "?" if v is None else f"{v:.0f}" for v in (b, l, o)))
            w("| " + " | ".join(row) + " |")
    if notes:
        w("")
        w("Notes:")
        w("")
        seen = {}
        for scen, system, text, rnd in notes:
            seen.setdefault((scen, system, text), []).append(rnd)
        for (scen, system, text), rounds in sorted(seen.items(), key=lambda x: (x[0][0], x[0][1])):
            w(f"- scenario {scen}, {system} (round {', '.join(rounds)}): {text}")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py WORK_DIR OUT_MD")
    meta, values, notes = load(sys.argv[1])
    text = render(meta, values, notes)
    with open(sys.argv[2], "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
