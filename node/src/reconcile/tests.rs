use super::*;
use shoal_dataplane::filter::memory::MemoryFirewall;
use shoal_dataplane::filter::{FilterRule, Firewall, ReadBack};
use shoal_dataplane::model::{Destination, Forwarding, Protocol, SchedFlags, Service, Tunnel};
use shoal_dataplane::MemoryDataplane;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The memory firewall, or, while `broken` is set, what nftables answers without its
/// module (EINVAL to every request).
struct Flaky {
    inner: MemoryFirewall,
    broken: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self, what: &str) -> Result<(), DataplaneError> {
        if self.broken.load(Ordering::SeqCst) {
            let text = "Invalid argument (os error 22)";
            return Err(shoal_dataplane::filter::nft::error_for(
                what,
                Some(22),
                text,
                None,
            ));
        }
        Ok(())
    }
}

impl Firewall for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn read(&mut self) -> Result<Option<ReadBack>, DataplaneError> {
        self.check("read")?;
        self.inner.read()
    }
    fn replace(&mut self, rules: &[FilterRule]) -> Result<(), DataplaneError> {
        self.check("replace")?;
        self.inner.replace(rules)
    }
    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.check("remove")?;
        self.inner.remove()
    }
}

fn service(vip: [u8; 4], port: u16) -> Service {
    Service {
        key: ServiceKey::Addr {
            addr: IpAddr::from(vip),
            port,
            protocol: Protocol::Tcp,
        },
        scheduler: "mh".into(),
        flags: SchedFlags::default(),
        persistence_timeout_s: 0,
        destinations: vec![Destination {
            addr: IpAddr::from([198, 18, 0, 1]),
            port,
            forwarding: Forwarding::Tunnel(Tunnel::Ipip),
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }],
    }
}

fn programmer(drain: Duration, broken: bool) -> (Programmer, MemoryDataplane, Arc<AtomicBool>) {
    let dp = MemoryDataplane::new();
    let broken = Arc::new(AtomicBool::new(broken));
    let p = Programmer {
        dataplane: Box::new(dp.clone()),
        reconciler: Reconciler::new(drain),
        firewall: Box::new(Flaky {
            inner: MemoryFirewall::default(),
            broken: broken.clone(),
        }),
        refused: Refused::default(),
    };
    (p, dp, broken)
}

fn keys(dp: &MemoryDataplane) -> Vec<ServiceKey> {
    dp.services().into_iter().map(|s| s.key).collect()
}

/// Audit finding C(2): with nf_tables missing, one restricted service failed every pass,
/// so nothing was applied and the node withdrew every VIP. Now only the restricted service
/// is withheld (fail closed: deleted at once, no drain), the rest is programmed and the
/// pass succeeds with the filter's error; once the filter works it is programmed too.
#[test]
fn a_failing_filter_withholds_only_the_services_it_restricts() {
    let (mut p, dp, broken) = programmer(Duration::from_secs(30), false);
    let open = service([203, 0, 113, 1], 80);
    let restricted = service([203, 0, 113, 2], 443);
    let desired = Desired {
        services: vec![open.clone(), restricted.clone()],
    };
    let filters = vec![SourceFilter {
        vip: IpAddr::from([203, 0, 113, 2]),
        protocol: Protocol::Tcp,
        port: 443,
        ranges: vec!["192.0.2.0/24".parse().unwrap()],
    }];
    let t0 = Instant::now();
    let pass = program(&mut p, desired.clone(), &filters, t0, &|| false).unwrap();
    assert_eq!(pass.filter.unwrap(), FilterChange::Replaced { rules: 2 });
    assert_eq!(keys(&dp), vec![open.key.clone(), restricted.key.clone()]);

    // The filter breaks: the restricted service goes at once, drain or not, with its VIP.
    broken.store(true, Ordering::SeqCst);
    let pass = program(&mut p, desired.clone(), &filters, t0, &|| false).unwrap();
    let err = pass.filter.unwrap_err().to_string();
    assert!(err.contains("nf_tables"), "{err}");
    assert_eq!(pass.withheld, vec![restricted.key.clone()]);
    assert_eq!(pass.unprogrammed, [restricted.key.clone()].into());
    assert_eq!(keys(&dp), vec![open.key.clone()]);
    assert_eq!(dp.vips(), [IpAddr::from([203, 0, 113, 1])].into());
    assert_eq!(pass.deadline, None, "nothing drains");

    // Retried: still broken, nothing changes; then repaired: programmed again.
    let pass = program(&mut p, desired.clone(), &filters, t0, &|| false).unwrap();
    assert!(pass.filter.is_err() && pass.ops.is_empty());
    broken.store(false, Ordering::SeqCst);
    let pass = program(&mut p, desired.clone(), &filters, t0, &|| false).unwrap();
    // The rules written before the failure were still in place.
    assert_eq!(pass.filter.unwrap(), FilterChange::Unchanged);
    assert!(pass.withheld.is_empty() && pass.unprogrammed.is_empty());
    assert_eq!(keys(&dp), vec![open.key, restricted.key]);
}

/// A probe on real IPVS: one service asking for a scheduler the kernel has no module for
/// failed every pass, so no replica reported its head applied and every VIP was withdrawn.
#[test]
fn a_service_the_kernel_refuses_is_set_aside_and_the_others_are_programmed() {
    let (mut p, dp, _) = programmer(Duration::ZERO, false);
    dp.only_schedulers(&["mh", "rr"]);
    let plain = service([203, 0, 113, 1], 80);
    let odd = Service {
        scheduler: "sed".into(),
        ..service([203, 0, 113, 2], 80)
    };
    let desired = Desired {
        services: vec![plain.clone(), odd.clone()],
    };
    let t0 = Instant::now();
    let pass = program(&mut p, desired.clone(), &[], t0, &|| false).unwrap();
    assert_eq!(keys(&dp), vec![plain.key.clone()]);
    assert_eq!(pass.refused.len(), 1, "{:?}", pass.refused);
    assert_eq!(
        pass.unprogrammed,
        [odd.key.clone()].into(),
        "its VIP is not announced"
    );
    let why = &pass.refused[0];
    assert!(why.starts_with(&odd.key.to_string()), "{why}");
    assert!(
        why.contains("no IPVS scheduler \"sed\"") && why.contains("ip_vs_sed"),
        "{why}"
    );
    assert_eq!(
        pass.deadline,
        Some(t0 + refused::RETRY_AFTER),
        "a retry is due"
    );

    // Not tried again before its retry: the passes between send nothing.
    let pass = program(
        &mut p,
        desired.clone(),
        &[],
        t0 + Duration::from_secs(1),
        &|| false,
    );
    assert!(pass.unwrap().ops.is_empty());
    // Tried again when due, and refused again.
    let pass = program(
        &mut p,
        desired.clone(),
        &[],
        t0 + refused::RETRY_AFTER,
        &|| false,
    );
    assert_eq!(pass.unwrap().refused.len(), 1);

    // A service already programmed that is changed to it is set aside too (and removed:
    // what it serves is not what the table asks); the table fixing both brings them in.
    let plain_odd = Service {
        scheduler: "sed".into(),
        ..plain.clone()
    };
    let both_odd = Desired {
        services: vec![plain_odd, odd.clone()],
    };
    let pass = program(&mut p, both_odd, &[], t0 + refused::RETRY_AFTER, &|| false).unwrap();
    assert_eq!(pass.refused.len(), 2, "{:?}", pass.refused);
    assert!(keys(&dp).is_empty());
    let fixed = Service {
        scheduler: "rr".into(),
        ..odd.clone()
    };
    let desired = Desired {
        services: vec![plain.clone(), fixed.clone()],
    };
    let pass = program(&mut p, desired, &[], t0 + refused::RETRY_AFTER, &|| false).unwrap();
    assert!(pass.refused.is_empty(), "{:?}", pass.refused);
    assert_eq!(keys(&dp), vec![plain.key, fixed.key]);
}

/// IPv6 disabled on the VIP interface (`disable_ipv6`, a common hardening) made every pass of
/// a table with an IPv6 VIP fail, so the node never applied its head and announced nothing,
/// IPv4 included; the kernel's EACCES read "permission denied". Now the services on that VIP
/// are set aside with a message that names the sysctl, and the others are programmed, at start
/// and when IPv6 is disabled under a running node (the kernel then drops the IPv6 VIPs).
#[test]
fn an_ipv6_vip_the_interface_cannot_hold_sets_aside_its_services_only() {
    let v6 = |port| Service {
        key: ServiceKey::Addr {
            addr: "2001:db8::10".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        },
        destinations: vec![Destination {
            addr: "2001:db8:1::1".parse().unwrap(),
            ..service([203, 0, 113, 1], port).destinations[0].clone()
        }],
        ..service([203, 0, 113, 1], port)
    };
    let (plain, web, tls) = (service([203, 0, 113, 1], 80), v6(80), v6(443));
    let desired = Desired {
        services: vec![plain.clone(), web.clone(), tls.clone()],
    };
    for disabled_before_start in [true, false] {
        let (mut p, dp, _) = programmer(Duration::ZERO, false);
        let t0 = Instant::now();
        if disabled_before_start {
            dp.set_ipv6_disabled(true);
        } else {
            program(&mut p, desired.clone(), &[], t0, &|| false).unwrap();
            assert_eq!(dp.vips().len(), 2);
            dp.set_ipv6_disabled(true);
            // The next drift check reads the VIP gone and puts it back: refused.
            p.reconciler.set_drift_check(Duration::ZERO);
        }
        let pass = program(&mut p, desired.clone(), &[], t0, &|| false).unwrap();
        assert_eq!(keys(&dp), vec![plain.key.clone()], "{:?}", pass.refused);
        assert_eq!(dp.vips(), [IpAddr::from([203, 0, 113, 1])].into());
        assert_eq!(pass.unprogrammed, [web.key.clone(), tls.key.clone()].into());
        assert_eq!(pass.refused.len(), 2, "{:?}", pass.refused);
        for why in &pass.refused {
            assert!(
                why.contains("IPv6 is disabled") && why.contains("disable_ipv6"),
                "{why}"
            );
        }
        // IPv6 back and the retry due: programmed again.
        dp.set_ipv6_disabled(false);
        let later = t0 + refused::RETRY_AFTER;
        let pass = program(&mut p, desired.clone(), &[], later, &|| false).unwrap();
        assert!(pass.refused.is_empty(), "{:?}", pass.refused);
        assert_eq!(keys(&dp).len(), 3);
        assert_eq!(dp.vips().len(), 2);
    }
}

/// A destination deleted behind Shoal's back is refused when the kept view changes it
/// (ENOENT): that is drift, not the service's fault, so the pass fails and the next one reads
/// the kernel and repairs it, instead of setting the whole service aside for a minute.
#[test]
fn a_destination_gone_behind_the_back_is_repaired_not_set_aside() {
    let (mut p, dp, _) = programmer(Duration::ZERO, false);
    let web = service([203, 0, 113, 1], 80);
    let t0 = Instant::now();
    let desired = Desired {
        services: vec![web.clone()],
    };
    program(&mut p, desired, &[], t0, &|| false).unwrap();
    dp.insert_service(Service {
        destinations: vec![],
        ..web.clone()
    });
    let mut heavier = web.clone();
    heavier.destinations[0].weight = 2;
    let desired = Desired {
        services: vec![heavier.clone()],
    };
    let failed = program(&mut p, desired.clone(), &[], t0, &|| false);
    assert!(failed.is_err(), "the kept view's update was refused");
    assert!(p.refused.listed().is_empty(), "{:?}", p.refused.listed());
    let pass = program(&mut p, desired, &[], t0, &|| false).unwrap();
    assert!(pass.refused.is_empty());
    assert_eq!(dp.services(), vec![heavier]);
}

/// A refusal that says nothing about the service (no permission, a shortage) fails the pass
/// as before: setting the service aside would hide a problem of the node.
#[test]
fn a_refusal_that_is_not_the_services_fault_fails_the_pass() {
    for errno in [libc::EPERM, libc::ENOMEM] {
        let (mut p, dp, _) = programmer(Duration::ZERO, false);
        let desired = Desired {
            services: vec![service([203, 0, 113, 1], 80)],
        };
        dp.fail_next(errno);
        let pass = program(&mut p, desired, &[], Instant::now(), &|| false);
        assert!(pass.is_err(), "errno {errno}");
        assert!(p.refused.listed().is_empty());
    }
}

/// Audit finding B: during an intended drain the admin API's read-back said
/// `matches_table: false` with a pending `del_dest`. The drain is now reported apart, and
/// the pending ops are empty while the kernel holds the table plus the draining entries.
#[test]
fn a_drain_in_progress_is_not_a_pending_op() {
    let (p, dp, _) = programmer(Duration::from_secs(30), false);
    let shared = SharedProgrammer::from_programmer(p);
    let mut two = service([203, 0, 113, 1], 80);
    let mut second = two.destinations[0].clone();
    second.addr = IpAddr::from([198, 18, 0, 2]);
    two.destinations.push(second);
    let other = service([203, 0, 113, 2], 80);
    let full = Desired {
        services: vec![two.clone(), other.clone()],
    };
    let t0 = Instant::now();
    program(&mut shared.lock(), full.clone(), &[], t0, &|| false).unwrap();
    let (_, pending) = shared.read_pending_blocking(&full).unwrap();
    assert_eq!(pending, Pending::default());

    // One backend and the other service removed: both drain, nothing is pending.
    let mut one = two.clone();
    one.destinations.pop();
    let less = Desired {
        services: vec![one],
    };
    program(&mut shared.lock(), less.clone(), &[], t0, &|| false).unwrap();
    assert_eq!(dp.services().len(), 2, "the removed service is still there");
    let (_, pending) = shared.read_pending_blocking(&less).unwrap();
    assert_eq!(pending.ops, vec![]);
    let mut draining: Vec<_> = pending
        .draining
        .iter()
        .map(|d| (d.service.to_string(), d.destination))
        .collect();
    draining.sort();
    assert_eq!(
        draining,
        [
            (
                "tcp 203.0.113.1:80".to_string(),
                Some((IpAddr::from([198, 18, 0, 2]), 80))
            ),
            ("tcp 203.0.113.2:80".to_string(), None),
        ]
    );
    // A change the drain does not explain is still pending.
    let (_, pending) = shared.read_pending_blocking(&Desired::default()).unwrap();
    assert!(!pending.ops.is_empty());
}

/// A node without nf_tables and without restricted services programs everything: the
/// filter is not even needed.
#[test]
fn no_source_ranges_needs_no_nftables() {
    let (mut p, dp, _) = programmer(Duration::ZERO, true);
    let open = service([203, 0, 113, 1], 80);
    let desired = Desired {
        services: vec![open.clone()],
    };
    let pass = program(&mut p, desired, &[], Instant::now(), &|| false).unwrap();
    assert_eq!(pass.filter.unwrap(), FilterChange::Unchanged);
    assert!(pass.withheld.is_empty());
    assert_eq!(keys(&dp), vec![open.key]);
}

/// A pass on an unchanged head is called drift only for what neither a drain's end nor a
/// health change explains (a drain's deletion was logged as drift).
#[test]
fn a_drain_deadline_is_not_called_drift() {
    assert_eq!(
        resync_cause(2, 2, false),
        ResyncCause {
            drained: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        resync_cause(3, 1, false),
        ResyncCause {
            drained: 1,
            drift: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        resync_cause(3, 1, true),
        ResyncCause {
            drained: 1,
            health: 2,
            ..Default::default()
        }
    );
    assert_eq!(resync_cause(1, 5, false).drained, 1);
}

/// Issue #15, broken behaviour 5: `Instant::now() + Duration::from_secs(u64::MAX)` panicked
/// inside the reconcile task, which then never programmed anything again.
#[test]
fn huge_delays_do_not_overflow() {
    let now = tokio::time::Instant::now();
    let far = later(now, Duration::MAX);
    assert!(far > now + Duration::from_secs(86_400));
    assert_eq!(
        later(now, Duration::from_secs(10)),
        now + Duration::from_secs(10)
    );
}

/// What a drift check gives way to: only what arrives after the pass marked its values seen.
#[test]
fn a_drift_check_gives_way_only_to_news() {
    let (head_tx, mut heads) = watch::channel(1u32);
    let (verdict_tx, mut verdicts) = watch::channel(1u32);
    let cancel = CancellationToken::new();
    head_tx.send_replace(2);
    verdict_tx.send_replace(2);
    // The pass reads both (as the loop does before it starts), then asks.
    heads.borrow_and_update();
    verdicts.borrow_and_update();
    let stop = news_since(&heads, &verdicts, &cancel);
    assert!(!stop(), "what the pass already took is not news");
    verdict_tx.send_replace(3);
    assert!(stop(), "a verdict changed during the pass");

    verdicts.borrow_and_update();
    let stop = news_since(&heads, &verdicts, &cancel);
    assert!(!stop());
    head_tx.send_replace(3);
    assert!(stop(), "a new head");

    heads.borrow_and_update();
    let stop = news_since(&heads, &verdicts, &cancel);
    assert!(!stop());
    cancel.cancel();
    assert!(stop(), "shutdown");

    let stop = news_since(&heads, &verdicts, &CancellationToken::new());
    drop(head_tx);
    assert!(stop(), "the head's sender is gone: the loop ends");
}

/// The admin read-back gives way to a reconcile pass waiting for the dataplane: the pass goes
/// first, and the read that follows sees what it did.
#[test]
fn an_admin_read_gives_way_to_a_waiting_pass() {
    let (p, dp, _) = programmer(Duration::ZERO, false);
    let shared = SharedProgrammer::from_programmer(p);
    let first = service([203, 0, 113, 1], 80);
    let second = service([203, 0, 113, 2], 80);
    let one = Desired {
        services: vec![first.clone()],
    };
    let both = Desired {
        services: vec![first, second],
    };
    program(&mut shared.lock(), one, &[], Instant::now(), &|| false).unwrap();

    // A pass asks for the lock (it comes in 30 ms, as a pass on the blocking pool would).
    shared.passes_waiting.fetch_add(1, Ordering::SeqCst);
    let pass = {
        let shared = shared.clone();
        let both = both.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let mut p = shared.lock();
            shared.passes_waiting.fetch_sub(1, Ordering::SeqCst);
            program(&mut p, both, &[], Instant::now(), &|| false).unwrap();
        })
    };
    let (actual, pending) = shared.read_pending_blocking(&both).unwrap();
    pass.join().unwrap();
    assert_eq!(actual.services.len(), 2, "the read came after the pass");
    assert_eq!(pending, Pending::default());
    assert_eq!(dp.services().len(), 2);
}

/// The node's programmer deletes a backend the table leaves out of a UDP service at once,
/// whatever the drain, and drains a TCP one: at weight 0 a UDP client that keeps its source
/// port stays on the removed backend for the whole drain.
#[tokio::test]
async fn the_node_deletes_a_removed_udp_backend_at_once_and_drains_a_tcp_one() {
    let dp = MemoryDataplane::new();
    let programmer = SharedProgrammer::new(
        Box::new(dp.clone()),
        Box::new(MemoryFirewall::default()),
        Duration::from_secs(30),
    );
    let two = |protocol| {
        let mut s = service([203, 0, 113, 1], 53);
        s.key = ServiceKey::Addr {
            addr: IpAddr::from([203, 0, 113, 1]),
            port: if protocol == Protocol::Udp { 53 } else { 80 },
            protocol,
        };
        let mut second = s.destinations[0].clone();
        second.addr = IpAddr::from([198, 18, 0, 2]);
        s.destinations.push(second);
        s
    };
    let (udp, tcp) = (two(Protocol::Udp), two(Protocol::Tcp));
    let both = Desired {
        services: vec![udp.clone(), tcp.clone()],
    };
    programmer.reconcile(both, vec![], || false).await.unwrap();
    let one_less = |mut s: Service| {
        s.destinations.pop();
        s
    };
    let removed = Desired {
        services: vec![one_less(udp.clone()), one_less(tcp.clone())],
    };
    let pass = programmer
        .reconcile(removed, vec![], || false)
        .await
        .unwrap();
    let gone = IpAddr::from([198, 18, 0, 2]);
    assert!(
        pass.ops.contains(&Op::DelDest(udp.key.clone(), gone, 53)),
        "{:?}",
        pass.ops
    );
    let weights = |key: &ServiceKey| -> Vec<(IpAddr, u32)> {
        dp.services()
            .into_iter()
            .find(|s| &s.key == key)
            .map(|s| s.destinations.iter().map(|d| (d.addr, d.weight)).collect())
            .unwrap_or_default()
    };
    assert_eq!(weights(&udp.key), vec![(IpAddr::from([198, 18, 0, 1]), 1)]);
    assert_eq!(
        weights(&tcp.key),
        vec![(IpAddr::from([198, 18, 0, 1]), 1), (gone, 0)],
        "tcp drains at weight 0"
    );
}

/// The drains file's keeper asked for the drains on the runtime: while an admin read-back held
/// the programmer (seconds at 10,000 services) the worker waited, and with it whatever else
/// ran there (the mesh's control loop stalled). From the blocking pool the runtime goes on.
#[tokio::test(flavor = "current_thread")]
async fn asking_for_the_drains_leaves_the_runtime_free_while_a_read_holds_the_lock() {
    let programmer = SharedProgrammer::new(
        Box::new(MemoryDataplane::new()),
        Box::new(MemoryFirewall::default()),
        Duration::from_secs(30),
    );
    let held = programmer.programmer.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _read = held.lock().unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    locked_rx.recv().unwrap();
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let drains = programmer.drains().await;
    assert_eq!(drains, Some(vec![]));
    assert!(
        ticks.load(Ordering::SeqCst) >= 10,
        "the runtime stood still while the lock was held ({} ticks in ~500 ms)",
        ticks.load(Ordering::SeqCst)
    );
    ticker.abort();
    reader.join().unwrap();
}
