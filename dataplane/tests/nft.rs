//! The source-range filter against this host's real nftables, each test in a network
//! namespace of its own (a thread that unshares its namespace), so nothing on the host changes.

use shoal_dataplane::filter::memory::MemoryFirewall;
use shoal_dataplane::filter::nft::NftFirewall;
use shoal_dataplane::filter::{
    reconcile_filter, rules, FilterChange, Firewall, SourceFilter, Verdict,
};
use shoal_dataplane::model::Protocol;

/// Runs `f` on a thread inside a fresh network namespace; `None` when this process may not
/// create one (not root): the caller skips.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which exits after `f`.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "unshare: {e}");
            return None;
        }
        Some(f())
    })
    .join()
    .expect("test thread")
}

fn filter(vip: &str, protocol: Protocol, port: u16, ranges: &[&str]) -> SourceFilter {
    SourceFilter {
        vip: vip.parse().unwrap(),
        protocol,
        port,
        ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
    }
}

/// Nothing restricted any more: the table goes, and an empty pass after that changes nothing.
fn removes_the_table_once_nothing_is_restricted(fw: &mut dyn Firewall) {
    assert_eq!(reconcile_filter(fw, &[]).unwrap(), FilterChange::Removed);
    assert_eq!(fw.read().unwrap(), None);
    assert_eq!(reconcile_filter(fw, &[]).unwrap(), FilterChange::Unchanged);
}

/// The memory twin (what a node without nftables uses) takes the same walk as nftables:
/// written, kept on a second pass, removed, and stays removed. Needs no root.
#[test]
fn the_memory_twin_reconciles_like_nftables() {
    let mut fw = MemoryFirewall::default();
    let filters = [filter("203.0.113.1", Protocol::Tcp, 80, &["192.0.2.0/24"])];
    assert_eq!(
        reconcile_filter(&mut fw, &filters).unwrap(),
        FilterChange::Replaced { rules: 2 }
    );
    assert_eq!(fw.read().unwrap().unwrap().rules, rules(&filters));
    assert_eq!(
        reconcile_filter(&mut fw, &filters).unwrap(),
        FilterChange::Unchanged
    );
    removes_the_table_once_nothing_is_restricted(&mut fw);
}

#[test]
fn rules_are_written_read_back_and_removed() {
    let ran = in_new_netns(|| {
        let mut fw = NftFirewall::open().expect("nftables answers");
        assert_eq!(
            fw.read().unwrap(),
            None,
            "a new namespace has no shoal table"
        );
        let filters = vec![
            filter(
                "203.0.113.10",
                Protocol::Tcp,
                80,
                &["198.18.1.0/24", "198.18.7.9/32"],
            ),
            filter("203.0.113.10", Protocol::Udp, 53, &["0.0.0.0/0"]),
            filter(
                "2001:db8::10",
                Protocol::Tcp,
                443,
                &["2001:db8:1::/48", "198.18.1.0/24"],
            ),
            filter("203.0.113.11", Protocol::Sctp, 9, &[]),
        ];
        let want = rules(&filters);
        assert_eq!(want.len(), 7, "{want:?}");
        assert_eq!(
            reconcile_filter(&mut fw, &filters).unwrap(),
            FilterChange::Replaced { rules: 7 }
        );
        let back = fw.read().unwrap().expect("table written");
        assert_eq!(back.foreign, 0);
        assert_eq!(
            back.rules, want,
            "what the kernel holds decodes to what was written"
        );
        assert_eq!(
            reconcile_filter(&mut fw, &filters).unwrap(),
            FilterChange::Unchanged
        );

        // A second handle (another process would see the same) reads the same rules.
        let mut other = NftFirewall::open().unwrap();
        assert_eq!(other.read().unwrap().unwrap().rules, want);

        // Narrowing a range rebuilds the table; the old range is gone.
        let narrowed = vec![filter(
            "203.0.113.10",
            Protocol::Tcp,
            80,
            &["198.18.1.128/25"],
        )];
        assert_eq!(
            reconcile_filter(&mut fw, &narrowed).unwrap(),
            FilterChange::Replaced { rules: 2 }
        );
        let back = fw.read().unwrap().unwrap();
        assert_eq!(back.rules.len(), 2);
        assert_eq!(back.rules[0].source.unwrap().to_string(), "198.18.1.128/25");
        assert_eq!(back.rules[1].verdict, Verdict::Drop);

        removes_the_table_once_nothing_is_restricted(&mut fw);
    });
    if ran.is_none() {
        eprintln!("SKIPPED: not allowed to create a network namespace (run as root)");
    }
}

#[test]
fn a_table_edited_behind_shoals_back_is_rebuilt() {
    let ran = in_new_netns(|| {
        let mut fw = NftFirewall::open().unwrap();
        let filters = vec![filter(
            "203.0.113.10",
            Protocol::Tcp,
            80,
            &["198.18.1.0/24"],
        )];
        reconcile_filter(&mut fw, &filters).unwrap();
        // Someone deletes the accept rule (here: writes the drop alone).
        let drop_only: Vec<_> = rules(&filters).into_iter().skip(1).collect();
        fw.replace(&drop_only).unwrap();
        assert_eq!(
            reconcile_filter(&mut fw, &filters).unwrap(),
            FilterChange::Replaced { rules: 2 }
        );
        assert_eq!(fw.read().unwrap().unwrap().rules, rules(&filters));
    });
    if ran.is_none() {
        eprintln!("SKIPPED: not allowed to create a network namespace (run as root)");
    }
}
