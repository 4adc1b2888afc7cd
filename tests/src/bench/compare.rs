//! Side by side on one machine in one run: the same workloads against etcd
//! and ferrocd, alternately, several rounds; medians and ratios ferrocd/etcd,
//! plus memory, data-dir size and start-up time after loading keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::stats::Report;
use super::workload::{self, KeySpec, Limit, RunOptions, Workload};
use crate::certs::{ClientTls, Pki};
use crate::cluster::Cluster;
use crate::member::Member;

/// Both servers get the same settings (etcd 3.5's snapshot count differs
/// from ferrocd's default, so it is set for both).
const SERVER_ARGS: &[&str] = &["--snapshot-count", "10000"];
const RANGE_KEY: &str = "bench-range-key";
/// The two 1-client scenarios the latency target is computed from.
const PUT_1: &str = "put, 1 client";
const ROUND_TRIP_1: &str = "range 1 key, serializable, 1 client";
/// ferrocd's place in the per-server arrays (etcd's is 0).
const FERROCD: usize = 1;

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub rounds: usize,
    pub requests: u64,
    pub size_keys: u64,
    pub etcd: PathBuf,
    pub ferrocd: PathBuf,
    /// The CPUs both servers run on (a `taskset -c` list), or any.
    pub server_cpus: Option<String>,
    /// Members of each server's cluster.
    pub members: usize,
    /// Both servers with client and peer TLS (certificates made for the
    /// run; clients present one).
    pub tls: bool,
}

struct Scenario {
    name: String,
    workload: Workload,
    conns: usize,
    clients: usize,
    total: u64,
}

fn scenarios(requests: u64) -> Vec<Scenario> {
    let keys = |val_size| KeySpec { key_size: 8, val_size, key_space_size: 100_000, sequential: false };
    let range = |serializable| Workload::Range { key: RANGE_KEY.into(), prefix: false, serializable, limit: 0 };
    let s =
        |name: &str, workload, conns, clients, total| Scenario { name: name.into(), workload, conns, clients, total };
    vec![
        s(PUT_1, Workload::Put(keys(256)), 1, 1, (requests / 10).max(200)),
        s(ROUND_TRIP_1, range(true), 1, 1, (requests / 10).max(200)),
        s("put, 64 clients / 4 conns", Workload::Put(keys(256)), 4, 64, requests),
        s("put, 256 clients / 8 conns", Workload::Put(keys(256)), 8, 256, requests),
        s("range 1 key, linearizable, 64 clients", range(false), 4, 64, requests * 2),
        s("range 1 key, serializable, 64 clients", range(true), 4, 64, requests * 2),
        s("txn-put, 64 clients / 4 conns", Workload::TxnPut { keys: keys(256), ops: 1 }, 4, 64, requests),
        s("watch, 100 watchers / 10 keys", Workload::Watch { watchers: 100, keys: 10 }, 4, 8, (requests / 10).max(200)),
        // Keepalives run about ten times as fast as puts: as many requests
        // would last a tenth of a second, too short for a steady p99.
        s("lease-keepalive, 64 clients", Workload::LeaseKeepalive, 4, 64, requests * 10),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn ratio(f: f64, e: f64) -> String {
    if e > 0.0 {
        format!("{:.2}", f / e)
    } else {
        "n/a".into()
    }
}

async fn run_one(endpoints: &[String], tls: Option<ClientTls>, s: &Scenario) -> Report {
    let opts = RunOptions {
        endpoints: endpoints.to_vec(),
        tls,
        conns: s.conns,
        clients: s.clients,
        limit: Limit::Total(s.total),
        progress: false,
    };
    match workload::run(&s.workload, &opts).await {
        Ok(r) => r,
        Err(e) => {
            let mut samples = super::stats::Samples::default();
            samples.error(format!("connect: {e}"));
            Report::new(samples, Duration::ZERO)
        }
    }
}

/// One server's cluster for a round, with TLS on clients and peers when
/// `pki` is given.
async fn start(bin: &Path, o: &CompareOptions, pki: Option<&Pki>) -> Cluster {
    let cpus = o.server_cpus.as_deref();
    let Some(p) = pki else { return Cluster::start_on_cpus(bin.to_path_buf(), o.members, SERVER_ARGS, cpus).await };
    let seats = (0..o.members).map(|i| p.seat(&format!("m{i}"), true)).collect();
    let flags: Vec<String> = [p.server_flags(), p.peer_flags(&p.peer)].concat();
    let args: Vec<&str> = SERVER_ARGS.iter().copied().chain(flags.iter().map(String::as_str)).collect();
    Cluster::start_at(bin.to_path_buf(), seats, &args, cpus).await
}

/// Bytes of all files below `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Footprint {
    rss: u64,
    data_dir: u64,
    startup: Duration,
}

/// Loads `keys` unique keys of 256-byte values, then measures memory and
/// data-dir size, then the time a restart takes until the member serves.
async fn footprint(bin: &Path, keys: u64, cpus: Option<&str>) -> Footprint {
    let mut member = Member::start_on_cpus(bin.to_path_buf(), SERVER_ARGS, cpus).await;
    let load = Scenario {
        name: "load".into(),
        workload: Workload::Put(KeySpec { key_size: 16, val_size: 256, key_space_size: keys, sequential: true }),
        conns: 4,
        clients: 64,
        total: keys,
    };
    let report = run_one(&[member.endpoint()], None, &load).await;
    if report.errors > 0 {
        eprintln!("loading {}: {} errors: {:?}", bin.display(), report.errors, report.error_samples);
    }
    // Let background flushes settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = member.rss_bytes();
    let data_dir = dir_size(&member.data_dir());
    member.stop();
    let t = Instant::now();
    member.restart().await;
    Footprint { rss, data_dir, startup: t.elapsed() }
}

pub async fn compare(o: &CompareOptions) -> String {
    let scenarios = scenarios(o.requests);
    let systems = ["etcd", "ferrocd"];
    // results[scenario][system] = reports over rounds
    let mut results: Vec<[Vec<Report>; 2]> = scenarios.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // The machine's CPU ticks (total, stolen) while each system's workloads ran.
    let mut ticks = [(0, 0); 2];
    // cpu[scenario][system] = the servers' CPU µs per request, by round.
    let mut cpu: Vec<[Vec<f64>; 2]> = scenarios.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // ferrocd's mean WAL fdatasync (ms) during each round's 1-client put.
    let mut put_fsyncs = Vec::new();
    let mut placement = String::new();
    let cpus = o.server_cpus.as_deref();
    let pki = o.tls.then(Pki::new);
    for round in 0..o.rounds {
        // Both servers run through the round, and each workload runs
        // against one right after the other, so that a machine whose speed
        // drifts (other VMs on the host, a busy disk) treats both alike.
        let clusters = [start(&o.etcd, o, pki.as_ref()).await, start(&o.ferrocd, o, pki.as_ref()).await];
        if round == 0 {
            placement = placement_line(&clusters);
        }
        for (which, cluster) in clusters.iter().enumerate() {
            let mut c = cluster.client().await;
            if let Err(e) = c.put(RANGE_KEY, vec![b'v'; 256], None).await {
                eprintln!("{}: cannot write the range key: {e}", systems[which]);
            }
        }
        for (i, s) in scenarios.iter().enumerate() {
            // Alternate which goes first, so neither always runs on a
            // warmer (or hotter) machine.
            let order: [usize; 2] = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let endpoints = clusters[which].endpoints();
                let endpoint = &endpoints[0];
                let fsyncs = if which == FERROCD && s.name == PUT_1 && o.members == 1 {
                    wal_fsyncs(endpoint).await
                } else {
                    None
                };
                let before = cpu_ticks();
                let server_before = servers_cpu_ticks(&clusters[which]);
                let tls = clusters[which].seats.first().and_then(|seat| seat.client_tls.clone());
                let r = run_one(&endpoints, tls, s).await;
                if r.ok > 0 {
                    let used = servers_cpu_ticks(&clusters[which]).saturating_sub(server_before);
                    cpu[i][which].push(used as f64 * 1e6 / USER_HZ / r.ok as f64);
                }
                if let (Some(b), Some(a)) = (before, cpu_ticks()) {
                    ticks[which].0 += a.0.saturating_sub(b.0);
                    ticks[which].1 += a.1.saturating_sub(b.1);
                }
                if let Some((sum0, n0)) = fsyncs {
                    if let Some((sum1, n1)) = wal_fsyncs(endpoint).await.filter(|&(_, n1)| n1 > n0) {
                        put_fsyncs.push((sum1 - sum0) / (n1 - n0) * 1e3);
                    }
                }
                // The first error says what failed, whichever server it was.
                let first_error = r.error_samples.first().map(|e| format!(" (first: {e})")).unwrap_or_default();
                eprintln!(
                    "round {} {:<8} {:<40} {:>10.1} req/s  p99 {:>8.3} ms  errors {}{first_error}",
                    round + 1,
                    systems[which],
                    s.name,
                    r.throughput,
                    r.p99.as_secs_f64() * 1e3,
                    r.errors
                );
                results[i][which].push(r);
            }
        }
    }
    let mut out = String::new();
    if o.members > 1 {
        out.push_str(&format!("{} members per server, loopback, clients spread over all of them.\n\n", o.members));
    }
    if o.tls {
        out.push_str("TLS on both servers: clients present certificates, members verify each other's.\n\n");
    }
    // --rounds 0 measures only the footprint.
    if o.rounds > 0 {
        for line in throughput_table(o.rounds, &scenarios, &results) {
            out.push_str(&line);
        }
        let fsync_during = (!put_fsyncs.is_empty()).then(|| median(put_fsyncs));
        for line in cpu_table(&scenarios, &cpu) {
            out.push_str(&line);
        }
        // The 1-client put target (one fdatasync plus a round trip) is a
        // single member's; a cluster's put also waits for a follower.
        if o.members == 1 {
            out.push_str(&latency_target(&scenarios, &results, fsync_during, cpus).await);
        }
        out.push_str(&steal_line(ticks));
        out.push_str(&placement);
    }
    if o.members > 1 {
        out.push_str(&failover_line(o, cpus).await);
        return out;
    }
    let fe = footprint(&o.etcd, o.size_keys, cpus).await;
    let ff = footprint(&o.ferrocd, o.size_keys, cpus).await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    out.push_str(&format!("\nAfter loading {} keys of 256-byte values:\n\n", o.size_keys));
    out.push_str("| figure | etcd | ferrocd | ratio |\n|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| RSS (MiB) | {:.1} | {:.1} | {} |\n",
        mib(fe.rss),
        mib(ff.rss),
        ratio(mib(ff.rss), mib(fe.rss))
    ));
    out.push_str(&format!(
        "| data dir (MiB) | {:.1} | {:.1} | {} |\n",
        mib(fe.data_dir),
        mib(ff.data_dir),
        ratio(mib(ff.data_dir), mib(fe.data_dir))
    ));
    let secs = |d: Duration| d.as_secs_f64();
    out.push_str(&format!(
        "| start-up until serving (s) | {:.2} | {:.2} | {} |\n",
        secs(fe.startup),
        secs(ff.startup),
        ratio(secs(ff.startup), secs(fe.startup))
    ));
    out
}

/// The machine's CPU time so far in clock ticks, total and stolen by the
/// hypervisor, from `/proc/stat`; None where there is none.
fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal; guest time is
    // already counted in user.
    let total = fields.iter().take(8).sum();
    Some((total, *fields.get(7)?))
}

/// Clock ticks per second of the CPU times in `/proc` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU time (user and system, in clock ticks) a cluster's server processes
/// have used so far.
fn servers_cpu_ticks(cluster: &Cluster) -> u64 {
    cluster
        .members
        .iter()
        .filter_map(|m| std::fs::read_to_string(format!("/proc/{}/stat", m.pid()?)).ok())
        .filter_map(|stat| parse_process_ticks(&stat))
        .sum()
}

/// utime + stime of a `/proc/<pid>/stat` line: fields 14 and 15, counted
/// after the command name's closing parenthesis (the name may hold spaces).
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The servers' CPU time per request (medians of the rounds): unlike
/// throughput, it leaves out the load generator's share of the machine.
fn cpu_table(scenarios: &[Scenario], cpu: &[[Vec<f64>; 2]]) -> Vec<String> {
    let mut lines = vec![
        String::from("\nServer CPU time per request (all members, user + system, medians of the rounds):\n\n"),
        String::from("| workload | etcd µs | ferrocd µs | ratio |\n|---|---:|---:|---:|\n"),
    ];
    for (s, [e, f]) in scenarios.iter().zip(cpu) {
        if e.is_empty() || f.is_empty() {
            continue;
        }
        let (ce, cf) = (median(e.clone()), median(f.clone()));
        lines.push(format!("| {} | {ce:.0} | {cf:.0} | {} |\n", s.name, ratio(cf, ce)));
    }
    lines
}

/// Where the processes ran, as the kernel reports it (pinned or not).
fn placement_line(clusters: &[Cluster; 2]) -> String {
    let cpus = |pid: Option<u32>| pid.and_then(crate::cpus::allowed).unwrap_or_else(|| "?".into());
    format!(
        "CPUs allowed: etcd {}, ferrocd {}, load generator {}\n",
        cpus(clusters[0].members[0].pid()),
        cpus(clusters[FERROCD].members[0].pid()),
        cpus(Some(std::process::id()))
    )
}

/// Trials of the failover measurement per server.
const FAILOVER_TRIALS: usize = 5;

/// The time from kill -9 of the leader to the next acknowledged write, for
/// each server (same election timeout, the default), median of a few
/// trials on fresh clusters.
async fn failover_line(o: &CompareOptions, cpus: Option<&str>) -> String {
    let mut medians = [0.0; 2];
    for (which, bin) in [&o.etcd, &o.ferrocd].into_iter().enumerate() {
        let mut trials = Vec::new();
        for _ in 0..FAILOVER_TRIALS {
            match failover(bin, o.members, cpus).await {
                Ok(took) => trials.push(took.as_secs_f64() * 1e3),
                Err(e) => eprintln!("failover trial of {}: {e}", bin.display()),
            }
        }
        medians[which] = median(trials);
    }
    format!(
        "\nFrom kill -9 of the leader to the next acknowledged write (median of {FAILOVER_TRIALS}, \
         --election-timeout 1000): etcd {:.0} ms, ferrocd {:.0} ms, ratio {}\n",
        medians[0],
        medians[FERROCD],
        ratio(medians[FERROCD], medians[0])
    )
}

async fn failover(bin: &Path, members: usize, cpus: Option<&str>) -> Result<Duration, String> {
    let mut cluster = Cluster::start_on_cpus(bin.to_path_buf(), members, SERVER_ARGS, cpus).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let survivors: Vec<String> =
        cluster.endpoints().into_iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, e)| e).collect();
    let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500));
    let mut c = etcd_client::Client::connect(&survivors, Some(opts)).await.map_err(|e| e.to_string())?;
    c.put("failover", "before", None).await.map_err(|e| e.to_string())?;
    let killed = Instant::now();
    cluster.members[leader].kill();
    loop {
        if c.put("failover", "after", None).await.is_ok() {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err("no write acknowledged within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// On a shared virtual machine, time the hypervisor gave to others skews a
/// run: printed so a reader can tell a quiet run from a noisy one.
fn steal_line(ticks: [(u64, u64); 2]) -> String {
    let pct = |(total, stolen): (u64, u64)| {
        if total == 0 {
            "n/a".to_string()
        } else {
            format!("{:.1} %", stolen as f64 * 100.0 / total as f64)
        }
    };
    format!(
        "\nCPU time stolen by the hypervisor while the workloads ran: etcd {}, ferrocd {}\n",
        pct(ticks[0]),
        pct(ticks[1])
    )
}

/// Sum (seconds) and count of the server's WAL fdatasyncs so far, from the
/// `etcd_disk_wal_fsync_duration_seconds` histogram both servers export.
async fn wal_fsyncs(endpoint: &str) -> Option<(f64, f64)> {
    let addr = endpoint.strip_prefix("http://")?;
    match crate::http::try_http_get(addr, "/metrics").await {
        Ok((200, body)) => parse_wal_fsyncs(&body),
        _ => None,
    }
}

fn parse_wal_fsyncs(metrics: &str) -> Option<(f64, f64)> {
    let s = crate::http::samples(metrics);
    Some((*s.get("etcd_disk_wal_fsync_duration_seconds_sum")?, *s.get("etcd_disk_wal_fsync_duration_seconds_count")?))
}

/// Issue 3's 1-client target: a durable put within 1.2 × (one fdatasync on
/// this disk + the loopback round trip). The round trip is the faster
/// server's 1-client serializable read of one key: the same gRPC call
/// through the same client, minus the write path. The fdatasync is the
/// probe's (once, after the rounds, on the servers' CPUs), and also
/// ferrocd's own WAL fdatasyncs during its 1-client puts (`fsync_during`,
/// ms): on a disk whose speed drifts, the probe may not see the disk the
/// puts saw.
async fn latency_target(
    scenarios: &[Scenario],
    results: &[[Vec<Report>; 2]],
    fsync_during: Option<f64>,
    server_cpus: Option<&str>,
) -> String {
    let mean_ms = |name: &str, which: usize| {
        let i = scenarios.iter().position(|s| s.name == name)?;
        let tput = median(results[i][which].iter().map(|r| r.throughput).collect());
        (tput > 0.0).then(|| 1e3 / tput)
    };
    // On the servers' CPUs: the disk's completion interrupt may go to one
    // CPU only, and a WAL's fdatasync pays for the wake-up across CPUs that
    // a probe on that CPU would not.
    let cpus = server_cpus.map(str::to_string);
    let probe = move || crate::cpus::run_on(cpus.as_deref(), || super::disk::fdatasync_p50_us(1000));
    let ran = tokio::task::spawn_blocking(probe).await.map_err(|e| e.to_string()).and_then(|pinned| pinned);
    let fsync = match ran {
        Ok(Ok(us)) => us as f64 / 1e3,
        Ok(Err(e)) => return format!("\nput, 1 client target: cannot measure fdatasync: {e}\n"),
        Err(e) => return format!("\nput, 1 client target: fdatasync probe failed: {e}\n"),
    };
    let (Some(rtt_e), Some(rtt_f), Some(put)) =
        (mean_ms(ROUND_TRIP_1, 0), mean_ms(ROUND_TRIP_1, FERROCD), mean_ms(PUT_1, FERROCD))
    else {
        return "\nput, 1 client target: a 1-client scenario has no result\n".into();
    };
    let rtt = rtt_e.min(rtt_f);
    let verdict = |target: f64| if put <= target { "met" } else { "not met" };
    let target = 1.2 * (fsync + rtt);
    let mut line = format!(
        "\nput, 1 client: ferrocd {put:.3} ms mean; target 1.2 × (fdatasync p50 {fsync:.3} ms + round trip {rtt:.3} ms) = {target:.3} ms: {}\n",
        verdict(target)
    );
    if let Some(during) = fsync_during {
        let target = 1.2 * (during + rtt);
        line.push_str(&format!(
            "  with ferrocd's own WAL fdatasyncs during those puts (mean {during:.3} ms): target {target:.3} ms: {}\n",
            verdict(target)
        ));
    }
    line
}

fn throughput_table(rounds: usize, scenarios: &[Scenario], results: &[[Vec<Report>; 2]]) -> Vec<String> {
    let mut lines = Vec::new();
    lines.push(format!(
        "Medians of {rounds} rounds, etcd 3.5.1 vs ferrocd, same machine, same run; \"rounds\" gives the lowest \
         and highest throughput ratio of a single round (each workload ran against both servers back to back).\n\n"
    ));
    lines.push(String::from("| workload | requests | etcd req/s | ferrocd req/s | ratio | rounds | etcd p99 ms | ferrocd p99 ms | ratio | errors etcd/ferrocd |\n"));
    lines.push(String::from("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"));
    for (s, [e, f]) in scenarios.iter().zip(results) {
        let tput = |rs: &Vec<Report>| median(rs.iter().map(|r| r.throughput).collect());
        let p99 = |rs: &Vec<Report>| median(rs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect());
        let errors = |rs: &Vec<Report>| rs.iter().map(|r| r.errors).sum::<u64>();
        let (te, tf, pe, pf) = (tput(e), tput(f), p99(e), p99(f));
        lines.push(format!(
            "| {} | {} | {te:.0} | {tf:.0} | {} | {} | {pe:.2} | {pf:.2} | {} | {}/{} |\n",
            s.name,
            s.total,
            ratio(tf, te),
            round_ratios(e, f),
            ratio(pf, pe),
            errors(e),
            errors(f)
        ));
    }
    lines
}

/// The lowest and highest ferrocd/etcd throughput ratio of one round.
fn round_ratios(etcd: &[Report], ferrocd: &[Report]) -> String {
    let ratios: Vec<f64> = etcd
        .iter()
        .zip(ferrocd)
        .filter(|(e, _)| e.throughput > 0.0)
        .map(|(e, f)| f.throughput / e.throughput)
        .collect();
    let lo = ratios.iter().copied().reduce(f64::min);
    let hi = ratios.iter().copied().reduce(f64::max);
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}"),
        _ => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_cpu_line_and_shown_as_a_share() {
        let stat = "cpu  100 0 50 800 10 0 20 20 5 0\ncpu0 50 0 25 400 5 0 10 10 0 0\nintr 1\n";
        // Guest time (5) is part of user time already.
        assert_eq!(parse_cpu_ticks(stat), Some((1000, 20)));
        assert_eq!(parse_cpu_ticks("intr 1\n"), None);
        assert_eq!(parse_cpu_ticks("cpu  1 2 x\n"), None);
        let line = steal_line([(1000, 20), (0, 0)]);
        assert!(line.contains("etcd 2.0 %, ferrocd n/a"), "{line}");
    }

    #[test]
    fn process_cpu_is_utime_plus_stime_after_the_command_name() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9 0 77 0 0\n";
        assert_eq!(parse_process_ticks(stat), Some(1290));
        assert_eq!(parse_process_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_process_ticks("no parenthesis"), None);
    }

    #[test]
    fn wal_fsyncs_come_from_the_histogram_sum_and_count() {
        let metrics = "# HELP etcd_disk_wal_fsync_duration_seconds x\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 3\n\
            etcd_disk_wal_fsync_duration_seconds_sum 0.0125\n\
            etcd_disk_wal_fsync_duration_seconds_count 5\n";
        assert_eq!(parse_wal_fsyncs(metrics), Some((0.0125, 5.0)));
        assert_eq!(parse_wal_fsyncs("etcd_disk_wal_fsync_duration_seconds_sum 1\n"), None);
    }

    #[test]
    fn round_ratios_pair_each_round_of_the_two_servers() {
        let report = |throughput| Report { throughput, ..Report::new(Default::default(), Duration::ZERO) };
        let etcd = [report(100.0), report(200.0), report(0.0)];
        let ferrocd = [report(150.0), report(180.0), report(50.0)];
        // Round 3 has no etcd figure to compare with.
        assert_eq!(round_ratios(&etcd, &ferrocd), "0.90–1.50");
        assert_eq!(round_ratios(&[], &[]), "n/a");
    }
}
