//! In-guest driver for the VM lab: applies, dumps and benchmarks IPVS tables with this crate.
//!
//! ipvs-lab apply FILE.json [--drain-ms N] [--settle]   reconcile to the table, print a JSON report
//! ipvs-lab dump                                        print what the kernel holds as JSON
//! ipvs-lab watch FILE.json --stop-file PATH [--drift-check-ms N] [--interval-ms M] [--timeout-ms T]
//!                [--then FILE2.json --switch-file PATH2] [--exclusive]
//!                                                      a pass every M ms (as a node's loop), one
//!                                                      JSON line per pass, until PATH exists; the
//!                                                      table is FILE2 once PATH2 exists; the IPVS
//!                                                      table declared Shoal's alone (--exclusive)
//! ipvs-lab backend-init VIP[,VIP...]                   prepare a backend namespace
//! ipvs-lab bench --services N --dests M [--reps R] [--settle-s S] [--scheduler mh|wrr|..]
//!                [--changes K]
//!                                                      Shoal vs `ipvsadm -R` / `-C`, JSON on stdout
//! ipvs-lab give-way --services N --dests M            a change during a drift check: the check
//!                                                      gives way, the change goes in on the kept
//!                                                      view; JSON on stdout

use serde_json::json;
use shoal_dataplane::ipvs::ListDecode;
use shoal_dataplane::model::*;
use shoal_dataplane::{
    backend_init, reconcile, reconcile_until, Dataplane, Desired, IpvsDataplane, IpvsOptions, Op,
    Reconciler, TableOwnership,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("apply") => apply(&args[1..]),
        Some("dump") => dump(),
        Some("watch") => watch(&args[1..]),
        Some("backend-init") => init(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("give-way") => give_way(&args[1..]),
        _ => Err("usage: ipvs-lab apply|dump|watch|backend-init|bench|give-way ...".into()),
    };
    if let Err(e) = result {
        eprintln!("ipvs-lab: {e}");
        std::process::exit(1);
    }
}

fn apply(args: &[String]) -> Res<()> {
    let file = args
        .first()
        .ok_or("apply needs a desired-table JSON file")?;
    let desired: Desired = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let drain_ms: u64 = num_flag(args, "--drain-ms", 0)?;
    let settle = args.iter().any(|a| a == "--settle");
    let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
    let mut rec = Reconciler::new(Duration::from_millis(drain_ms));
    let started = Instant::now();
    let mut passes = Vec::new();
    loop {
        let t = Instant::now();
        let report = reconcile(&mut dp, &mut rec, &desired, Instant::now())?;
        passes.push(json!({
            "at_ms": started.elapsed().as_millis() as u64,
            "elapsed_ms": t.elapsed().as_secs_f64() * 1e3,
            "ops": report.ops,
        }));
        let next = rec.next_deadline();
        if !settle || (report.ops.is_empty() && next.is_none()) {
            break;
        }
        if passes.len() >= 50 {
            return Err(format!("no convergence after 50 passes: {}", json!(passes)).into());
        }
        if let Some(deadline) = next {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        }
    }
    println!(
        "{}",
        json!({ "passes": passes, "messages_sent": dp.messages_sent() })
    );
    Ok(())
}

/// A number flag, `default` when absent; an error names the flag when it does not parse.
fn num_flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Res<T>
where
    T::Err: std::fmt::Display,
{
    match flag(args, name) {
        Some(v) => v.parse().map_err(|e| format!("{name} {v}: {e}").into()),
        None => Ok(default),
    }
}

fn ms_flag(args: &[String], name: &str, default: u64) -> Res<Duration> {
    num_flag(args, name, default).map(Duration::from_millis)
}

/// The node's loop in miniature: passes planned on the kept view, a full read every drift
/// check. The first pass loads the table and prints `{"ready":true}`; the command ends when
/// the stop file exists, or fails at the timeout. With `--then`, the passes after the switch
/// file appears reconcile to the second table (a rule change while the view is kept).
fn watch(args: &[String]) -> Res<()> {
    let file = args
        .first()
        .ok_or("watch needs a desired-table JSON file")?;
    let read_table =
        |f: &str| -> Res<Desired> { Ok(serde_json::from_str(&std::fs::read_to_string(f)?)?) };
    let mut desired = read_table(file)?;
    let mut then = match flag(args, "--then") {
        Some(f) => Some((
            read_table(&f)?,
            std::path::PathBuf::from(
                flag(args, "--switch-file").ok_or("--then needs --switch-file")?,
            ),
        )),
        None => None,
    };
    let ownership = if args.iter().any(|a| a == "--exclusive") {
        TableOwnership::Exclusive
    } else {
        TableOwnership::Shared
    };
    let drift_check = ms_flag(args, "--drift-check-ms", 3000)?;
    let interval = ms_flag(args, "--interval-ms", 200)?;
    let timeout = ms_flag(args, "--timeout-ms", 120_000)?;
    let stop =
        std::path::PathBuf::from(flag(args, "--stop-file").ok_or("watch needs --stop-file")?);
    let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
    let mut rec = Reconciler::new(Duration::ZERO)
        .with_drift_check(drift_check)
        .with_ownership(ownership);
    let started = Instant::now();
    let mut first = true;
    let mut on_second = false;
    let stdout = std::io::stdout();
    while started.elapsed() < timeout {
        let switched = match &then {
            Some((_, switch)) => switch.exists(),
            None => false,
        };
        if switched {
            if let Some((next, _)) = then.take() {
                desired = next;
                on_second = true;
            }
        }
        let t = Instant::now();
        let report = reconcile(&mut dp, &mut rec, &desired, Instant::now());
        let line = match &report {
            Ok(r) => json!({
                "at_ms": started.elapsed().as_millis() as u64,
                "elapsed_ms": t.elapsed().as_secs_f64() * 1e3,
                "full_read": r.full_read,
                "ops": r.ops,
                "second_table": on_second,
            }),
            Err(e) => {
                json!({ "at_ms": started.elapsed().as_millis() as u64, "error": e.to_string() })
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        if first {
            writeln!(out, "{}", json!({ "ready": true }))?;
            first = false;
        }
        out.flush()?;
        if stop.exists() {
            return Ok(());
        }
        drop(out);
        std::thread::sleep(interval);
    }
    Err("timed out before the stop file appeared".into())
}

fn dump() -> Res<()> {
    let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
    println!("{}", serde_json::to_string(&dp.read()?)?);
    Ok(())
}

fn init(args: &[String]) -> Res<()> {
    let vips: Vec<IpAddr> = args
        .first()
        .ok_or("backend-init needs VIP[,VIP...]")?
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let accept = backend_init::Accept {
        vips,
        pools: Vec::new(),
    };
    // Changes only (a rerun prints nothing); the checks are `shoal backend-init`'s to print.
    for change in backend_init::prepare(&accept)?.changed {
        println!("{change}");
    }
    Ok(())
}

/// `services` services spread over VIPs 203.0.113.x (100 ports each), `dests` tunnel
/// destinations each, mh with mh-port: the shape a Shoal node programs.
fn bench_table(services: usize, dests: usize, scheduler: &str) -> Desired {
    let services = (0..services)
        .map(|i| {
            let vip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i / 100) as u8 + 1));
            Service {
                key: ServiceKey::Addr {
                    addr: vip,
                    port: 1000 + (i % 100) as u16,
                    protocol: Protocol::Tcp,
                },
                scheduler: scheduler.into(),
                flags: SchedFlags {
                    port: scheduler == "mh",
                    fallback: false,
                },
                persistence_timeout_s: 0,
                destinations: (0..dests)
                    .map(|d| Destination {
                        addr: IpAddr::V4(Ipv4Addr::new(
                            198,
                            18,
                            (d / 250) as u8 + 1,
                            (d % 250) as u8 + 1,
                        )),
                        port: 8080,
                        forwarding: Forwarding::Tunnel(Tunnel::Ipip),
                        weight: 1,
                        upper_threshold: 0,
                        lower_threshold: 0,
                    })
                    .collect(),
            }
        })
        .collect();
    Desired { services }
}

fn ipvsadm_rules(d: &Desired) -> String {
    let mut out = String::new();
    for s in &d.services {
        let ServiceKey::Addr { addr, port, .. } = s.key else {
            continue;
        };
        // ipvsadm reads IPv6 as `[2001:db8::1]:80`, which SocketAddr prints.
        let addr = std::net::SocketAddr::new(addr, port);
        if s.flags.port {
            out.push_str(&format!("-A -t {addr} -s {} -b mh-port\n", s.scheduler));
        } else {
            out.push_str(&format!("-A -t {addr} -s {}\n", s.scheduler));
        }
        for dst in &s.destinations {
            out.push_str(&format!(
                "-a -t {addr} -r {} -i -w {}\n",
                std::net::SocketAddr::new(dst.addr, dst.port),
                dst.weight
            ));
        }
    }
    out
}

fn ipvsadm_restore(rules: &str) -> Res<f64> {
    let t = Instant::now();
    let mut child = Command::new("ipvsadm")
        .arg("-R")
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(rules.as_bytes())?;
    let status = child.wait()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return Err(format!("ipvsadm -R failed: {status}").into());
    }
    Ok(ms)
}

/// `ipvsadm -C`: one flush of every service.
fn ipvsadm_clear() -> Res<f64> {
    let t = Instant::now();
    let status = Command::new("ipvsadm").arg("-C").status()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return Err(format!("ipvsadm -C failed: {status}").into());
    }
    Ok(ms)
}

fn count_services() -> Res<usize> {
    let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
    Ok(dp.read()?.services.len())
}

fn bench(args: &[String]) -> Res<()> {
    let n: usize = num_flag(args, "--services", 10_000)?;
    let m: usize = num_flag(args, "--dests", 10)?;
    // IPVS parks deleted destinations in a trash list for about a minute and scans that list on
    // every destination add: a load right after a mass delete is several times slower. Each
    // load phase therefore starts after this pause (except the very first, on a fresh kernel).
    let settle = Duration::from_secs(num_flag(args, "--settle-s", 130)?);
    let reps: usize = num_flag(args, "--reps", 3)?;
    // mh rebuilds a per-service lookup table on every destination add (both tools pay it); the
    // large run can pick a cheaper scheduler to fit TCG time.
    let scheduler = flag(args, "--scheduler").unwrap_or_else(|| "mh".into());
    let table = bench_table(n, m, &scheduler);
    let empty = Desired::default();
    // One-destination changes (health flips), each on another service, applied one by one.
    let changes: usize = num_flag(args, "--changes", 5)?;
    let mut steps = Vec::with_capacity(changes);
    let mut changed = table.clone();
    for i in 0..changes.max(1) {
        changed.services[(n / 2 + i * 7) % n].destinations[m / 2].weight = 2;
        steps.push(changed.clone());
    }
    let load_rules = ipvsadm_rules(&table);
    let mut runs = Vec::new();
    for rep in 0..reps {
        let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
        // The drift check is timed on its own (below); a periodic one falling due in a timed
        // pass (a load of more than a minute) would hide what the pass itself costs.
        let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(Duration::from_secs(3600));
        let mut full_reads = Vec::new();
        let mut timed =
            |dp: &mut IpvsDataplane, rec: &mut Reconciler, d: &Desired| -> Res<(f64, usize, u64)> {
                let before = dp.messages_sent();
                let t = Instant::now();
                let r = reconcile(dp, rec, d, Instant::now())?;
                full_reads.push(r.full_read);
                Ok((
                    t.elapsed().as_secs_f64() * 1e3,
                    r.ops.len(),
                    dp.messages_sent() - before,
                ))
            };
        if rep > 0 {
            std::thread::sleep(settle);
        }
        let (load_ms, load_ops, load_msgs) = timed(&mut dp, &mut rec, &table)?;
        let loaded = dp.read()?.services.len();
        let mut changes_ms = Vec::new();
        let (mut change_ops, mut change_msgs) = (0, 0);
        for step in &steps {
            let (ms, ops, msgs) = timed(&mut dp, &mut rec, step)?;
            changes_ms.push(ms);
            change_ops = change_ops.max(ops);
            change_msgs = change_msgs.max(msgs);
        }
        let change_ms = changes_ms[0];
        // What each periodic drift check costs: a pass that reads the whole table back.
        rec.invalidate();
        let (check_ms, check_ops, _) = timed(&mut dp, &mut rec, &changed)?;
        // Where the check before a flush spends its time (3 samples each): the list alone
        // (kernel and socket), the list decoded down to keys (what the check does now), and
        // decoded whole with neli (what it did before).
        let mut probe = |how| -> Res<Vec<f64>> {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    let n = dp.probe_service_list(how)?;
                    if n != loaded {
                        return Err(format!("listed {n} services, expected {loaded}").into());
                    }
                    Ok(t.elapsed().as_secs_f64() * 1e3)
                })
                .collect()
        };
        let list_only_ms = probe(ListDecode::Nothing)?;
        let list_keys_ms = probe(ListDecode::KeysOnly)?;
        let list_full_ms = probe(ListDecode::Full)?;
        // Removal as the node does it by default (shared table: the list, then the flush and
        // one batched send of the VIP deletes).
        let (remove_ms, remove_ops, remove_msgs) = timed(&mut dp, &mut rec, &empty)?;
        let left = dp.read()?.services.len();
        // The VIP deletes alone (ipvsadm -C removes no addresses): add them back, time the
        // delete.
        let vips: Vec<IpAddr> = table.vips().into_iter().collect();
        let adds: Vec<Op> = vips.iter().map(|v| Op::AddVip(*v)).collect();
        let dels: Vec<Op> = vips.iter().map(|v| Op::DelVip(*v)).collect();
        if let Some(e) = dp.apply_all(&adds).first_error() {
            return Err(e.into());
        }
        let t = Instant::now();
        if let Some(e) = dp.apply_all(&dels).first_error() {
            return Err(e.into());
        }
        let vip_delete_ms = t.elapsed().as_secs_f64() * 1e3;

        // The same content through ipvsadm, in the same boot.
        std::thread::sleep(settle);
        let ipvsadm_load_ms = ipvsadm_restore(&load_rules)?;
        let ipvsadm_loaded = count_services()?;
        let ipvsadm_clear_ms = ipvsadm_clear()?;
        // Its fixed cost: the process, libnl, and a flush of an empty table.
        let ipvsadm_clear_empty_ms = ipvsadm_clear()?;
        // Removal with the table declared Shoal's alone: a bare flush, on the table loaded
        // again after the settle pause (that load is not a figure: the trash list).
        std::thread::sleep(settle);
        rec.invalidate();
        let (reload_ms, _, _) = timed(&mut dp, &mut rec, &table)?;
        rec.set_ownership(TableOwnership::Exclusive);
        let (remove_exclusive_ms, remove_exclusive_ops, _) = timed(&mut dp, &mut rec, &empty)?;
        rec.set_ownership(TableOwnership::Shared);
        let left_exclusive = dp.read()?.services.len();
        runs.push(json!({
            "rep": rep,
            "shoal_load_ms": load_ms, "shoal_load_ops": load_ops, "shoal_load_messages": load_msgs,
            "shoal_loaded_services": loaded,
            "shoal_change_ms": change_ms, "shoal_changes_ms": changes_ms,
            "shoal_change_ops": change_ops, "shoal_change_messages": change_msgs,
            "shoal_drift_check_ms": check_ms, "shoal_drift_check_ops": check_ops,
            "shoal_remove_ms": remove_ms, "shoal_remove_ops": remove_ops, "shoal_remove_messages": remove_msgs,
            "shoal_left_services": left,
            "full_reads": full_reads,
            "list_only_ms": list_only_ms, "list_keys_ms": list_keys_ms, "list_full_ms": list_full_ms,
            "vip_delete_ms": vip_delete_ms, "vips": vips.len(),
            "shoal_reload_ms": reload_ms,
            "shoal_remove_exclusive_ms": remove_exclusive_ms, "shoal_remove_exclusive_ops": remove_exclusive_ops,
            "shoal_left_services_exclusive": left_exclusive,
            "ipvsadm_load_ms": ipvsadm_load_ms, "ipvsadm_loaded_services": ipvsadm_loaded,
            "ipvsadm_clear_ms": ipvsadm_clear_ms, "ipvsadm_clear_empty_ms": ipvsadm_clear_empty_ms,
        }));
        eprintln!(
            "bench rep {rep}: {}",
            runs.last().map(|r| r.to_string()).unwrap_or_default()
        );
    }
    println!(
        "{}",
        json!({ "services": n, "dests": m, "reps": reps, "runs": runs })
    );
    Ok(())
}

/// A change arriving during a drift check, on a real kernel. Loads N x M, times one whole read
/// (what a check costs), then starts a drift check and raises `stop` from another thread a
/// quarter of that time in (as a new head or verdict does in the node's loop): the pass gives
/// way, the change goes in after it with one op and no read, and the check taken up again
/// finds nothing to repair. The same change behind a check that cannot give way is timed too:
/// it waits for the rest of the read.
fn give_way(args: &[String]) -> Res<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let n: usize = num_flag(args, "--services", 2_000)?;
    let m: usize = num_flag(args, "--dests", 4)?;
    let table = bench_table(n, m, "wrr");
    let mut changed = table.clone();
    changed.services[n / 2].destinations[m / 2].weight = 2;
    let every = Duration::from_secs(3600);
    let mut dp = IpvsDataplane::open(&IpvsOptions::default())?;
    let mut rec = Reconciler::new(Duration::ZERO).with_drift_check(every);
    let loaded_at = Instant::now();
    reconcile(&mut dp, &mut rec, &table, loaded_at)?;
    let t = Instant::now();
    let whole = dp.read_view()?;
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    if whole.services.len() < n {
        return Err(format!("read {} services, loaded {n}", whole.services.len()).into());
    }
    drop(whole);
    // The pass's clock: the drift check due.
    let due = loaded_at + every + Duration::from_secs(1);
    let raise_after = Duration::from_secs_f64(read_ms / 4e3);
    let raise = |flag: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            std::thread::sleep(raise_after);
            flag.store(true, Ordering::SeqCst);
            Instant::now()
        })
    };

    let flag = Arc::new(AtomicBool::new(false));
    let raiser = raise(flag.clone());
    let stop = || flag.load(Ordering::SeqCst);
    let check = reconcile_until(&mut dp, &mut rec, &table, due, &stop)?;
    let returned = Instant::now();
    let raised = raiser.join().map_err(|_| "raiser panicked")?;
    let change = reconcile_until(&mut dp, &mut rec, &changed, due, &stop)?;
    let applied = Instant::now();
    let again = reconcile(&mut dp, &mut rec, &changed, due)?;
    let matches = rec.view().cloned() == Some(dp.read_view()?);

    // The same change behind a check that cannot give way (`reconcile`, as before).
    let flag = Arc::new(AtomicBool::new(false));
    let raiser = raise(flag.clone());
    let later = due + every + Duration::from_secs(1);
    let blocked = reconcile(&mut dp, &mut rec, &changed, later)?;
    let raised_blocked = raiser.join().map_err(|_| "raiser panicked")?;
    let blocked_change = reconcile(&mut dp, &mut rec, &table, later)?;
    let applied_blocked = Instant::now();
    reconcile(&mut dp, &mut rec, &Desired::default(), later)?;
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({
            "services": n, "dests": m, "read_ms": read_ms,
            "raise_after_ms": raise_after.as_secs_f64() * 1e3,
            "check_gave_way": check.gave_way, "check_ops": check.ops.len(),
            "stop_to_return_ms": ms(raised, returned),
            "change_full_read": change.full_read, "change_ops": change.ops.len(),
            "change_latency_ms": ms(raised, applied),
            "check_again_full_read": again.full_read, "check_again_ops": again.ops.len(),
            "view_matches_kernel": matches,
            "blocked_full_read": blocked.full_read, "blocked_gave_way": blocked.gave_way,
            "blocked_change_ops": blocked_change.ops.len(),
            "blocked_change_latency_ms": ms(raised_blocked, applied_blocked),
        })
    );
    Ok(())
}
