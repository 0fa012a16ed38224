//! Tests that change links and addresses, each in a network namespace of its own (created by
//! the test thread with `unshare`, so the host's interfaces are never touched). They need
//! CAP_SYS_ADMIN and CAP_NET_ADMIN; without them they say so and pass.

use shoal_dataplane::link::Rtnl;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Runs `f` on a thread moved into a fresh network namespace; `None` when that is not allowed.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) only changes this thread's namespace membership; it takes no
        // pointers.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!(
                "SKIPPED: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .expect("test thread")
}

#[test]
fn many_addresses_change_in_one_batch_and_each_gets_its_own_answer() {
    let _ = in_fresh_netns(|| {
        let mut rtnl = Rtnl::open().expect("rtnetlink socket");
        // The namespace's own loopback (some kernels have no dummy links); Shoal's VIPs are
        // host addresses of global scope on whichever link, as here.
        rtnl.set_up("lo").expect("link up");
        let index = rtnl.link("lo").expect("list").expect("lo").index;
        // 250 VIPs: more than one netlink batch (200), v4 and v6.
        let vips: Vec<IpAddr> = (0..250u32)
            .map(|i| match i % 2 {
                0 => IpAddr::from([203, 0, 113, (i / 2) as u8]),
                _ => format!("2001:db8::{i:x}").parse().unwrap(),
            })
            .collect();
        let add: Vec<(IpAddr, bool)> = vips.iter().map(|ip| (*ip, true)).collect();
        let results = rtnl.set_addresses(index, &add).expect("add batch");
        assert_eq!(results.len(), vips.len());
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        let listed = rtnl.addresses(index).expect("list addresses");
        assert_eq!(listed, vips.iter().copied().collect::<BTreeSet<_>>());
        // Adding one that is there, deleting one that is not: done already (false), not errors.
        let again = rtnl
            .set_addresses(
                index,
                &[(vips[0], true), ("203.0.113.250".parse().unwrap(), false)],
            )
            .expect("repeat batch");
        assert!(matches!(again[..], [Ok(false), Ok(false)]), "{again:?}");
        let del: Vec<(IpAddr, bool)> = vips.iter().map(|ip| (*ip, false)).collect();
        let results = rtnl.set_addresses(index, &del).expect("delete batch");
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        assert!(rtnl.addresses(index).expect("list addresses").is_empty());
        // A bad index fails that change alone, with the kernel's reason.
        let bad = rtnl
            .set_addresses(index + 1000, &[(vips[0], true)])
            .expect("batch sent");
        assert!(bad[0].is_err(), "{bad:?}");
    });
}

/// A probe: an address added by hand with a /24 on Shoal's interface was "deleted" as a /32
/// every drift check, the kernel answered that no such address exists, the delete counted as
/// done, and the address stayed.
#[test]
fn an_address_added_by_hand_with_another_prefix_is_deleted_under_it() {
    let _ = in_fresh_netns(|| {
        let mut rtnl = Rtnl::open().expect("rtnetlink socket");
        rtnl.set_up("lo").expect("link up");
        let index = rtnl.link("lo").expect("list").expect("lo").index;
        let v4: IpAddr = "203.0.113.99".parse().unwrap();
        let v6: IpAddr = "2001:db8::99".parse().unwrap();
        for (address, family) in [("203.0.113.99/24", "-4"), ("2001:db8::99/64", "-6")] {
            let added = std::process::Command::new("ip")
                .args([family, "addr", "add", address, "dev", "lo"])
                .status()
                .expect("ip (iproute2)");
            assert!(added.success(), "ip addr add {address}");
        }
        let read = rtnl.prefixed_addresses(index).expect("list addresses");
        assert_eq!((read.get(&v4), read.get(&v6)), (Some(&24), Some(&64)));
        // The premise: a host-prefix delete misses the /24, and is told it is not there.
        let missed = rtnl.set_addresses(index, &[(v4, false)]).expect("sent");
        assert!(matches!(missed[..], [Ok(false)]), "{missed:?}");
        assert!(rtnl.addresses(index).expect("list").contains(&v4));

        let done = rtnl
            .set_addresses_read(index, &[(v4, false), (v6, false)], &read)
            .expect("sent");
        assert!(matches!(done[..], [Ok(true), Ok(true)]), "{done:?}");
        let left = rtnl.addresses(index).expect("list");
        assert!(!left.contains(&v4) && !left.contains(&v6), "{left:?}");
    });
}
