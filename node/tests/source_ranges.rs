//! Source ranges end to end, with real packets: a replica namespace running a real `shoal run`
//! (static source, memory dataplane, nftables source filter) with a listener on the VIP, and
//! two client namespaces, one inside the allowed range and one outside. Real TCP connections
//! from each client tell what the filter does; the table is also read back through the crate.
//!
//! Needs root (namespaces, nftables). Names carry a per-process prefix; everything is removed
//! on drop.

use shoal_dataplane::filter::nft::NftFirewall;
use shoal_dataplane::filter::{rules, FilterRule, Firewall, SourceFilter};
use shoal_dataplane::model::Protocol;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netns.rs"]
mod netns;
use netns::{add_addrs, add_ns, have_root, sh, sh_quiet};

const VIP4: &str = "203.0.113.77";
const VIP6: &str = "2001:db8:77::1";
const PORT: u16 = 8080;
/// A port of the VIP that no service names: never filtered.
const OTHER_PORT: u16 = 9090;
const WAIT: Duration = Duration::from_secs(40);

/// Runs `f` on a thread that entered network namespace `ns` (sockets it makes stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; it changes only this thread, which ends
        // after `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// What a client sees when it connects.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Connected and read the listener's greeting.
    Answered,
    /// No answer at all: the SYN was dropped.
    Dropped,
    Other(String),
}

fn connect(ns: &str, to: SocketAddr) -> Seen {
    in_ns(ns, move || {
        match TcpStream::connect_timeout(&to, Duration::from_millis(1500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 3];
                match s.read_exact(&mut buf) {
                    Ok(()) if &buf == b"ok\n" => Seen::Answered,
                    other => Seen::Other(format!("{other:?} {buf:?}")),
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                Seen::Dropped
            }
            Err(e) => Seen::Other(e.to_string()),
        }
    })
}

struct Lab {
    prefix: String,
    lb: String,
    allowed: String,
    denied: String,
    dir: tempfile::TempDir,
    shoal: Option<Child>,
    stop: Arc<AtomicBool>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.shoal.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.lb, &self.allowed, &self.denied] {
            sh_quiet(&["ip", "netns", "del", ns]);
        }
    }
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!("sr{}", std::process::id() % 100_000);
        let lab = Lab {
            lb: format!("{prefix}lb"),
            allowed: format!("{prefix}ok"),
            denied: format!("{prefix}no"),
            prefix,
            dir: tempfile::Builder::new()
                .prefix("shoal-source-ranges-")
                .tempdir()
                .unwrap(),
            shoal: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        for ns in [&lab.lb, &lab.allowed, &lab.denied] {
            add_ns(ns);
        }
        add_addrs(&lab.lb, "lo", &format!("{VIP4}/32"), &format!("{VIP6}/128"));
        lab.link(&lab.allowed, "a", 20);
        lab.link(&lab.denied, "b", 21);
        lab
    }

    /// A veth between the replica and a client: 198.18.N.1/30 and 2001:db8:N::1/64 on the
    /// replica, .2 / ::2 on the client, whose default routes point at the replica.
    fn link(&self, client: &str, tag: &str, n: u8) {
        let (lb_dev, c_dev) = (
            format!("{}{tag}0", self.prefix),
            format!("{}{tag}1", self.prefix),
        );
        sh(&[
            "ip", "link", "add", &lb_dev, "netns", &self.lb, "type", "veth", "peer", "name",
            &c_dev, "netns", client,
        ]);
        for (ns, dev, host) in [(self.lb.as_str(), &lb_dev, 1), (client, &c_dev, 2)] {
            add_addrs(
                ns,
                dev,
                &format!("198.18.{n}.{host}/30"),
                &format!("2001:db8:{n}::{host}/64"),
            );
        }
        sh(&[
            "ip",
            "-n",
            client,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{n}.1"),
        ]);
        sh(&[
            "ip",
            "-6",
            "-n",
            client,
            "route",
            "add",
            "default",
            "via",
            &format!("2001:db8:{n}::1"),
        ]);
    }

    /// Listeners on the VIPs (both ports) in the replica namespace, greeting every client.
    fn serve(&self) {
        for addr in [
            format!("{VIP4}:{PORT}"),
            format!("[{VIP6}]:{PORT}"),
            format!("{VIP4}:{OTHER_PORT}"),
        ] {
            let stop = self.stop.clone();
            let addr: SocketAddr = addr.parse().unwrap();
            let listener = in_ns(&self.lb, move || TcpListener::bind(addr).unwrap());
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(b"ok\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
    }

    fn rules_path(&self) -> std::path::PathBuf {
        self.dir.path().join("rules.toml")
    }

    fn write_rules(&self, text: &str) {
        let tmp = self.dir.path().join("rules.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.rules_path()).unwrap();
    }

    fn start_shoal(&mut self) {
        let log = File::create(self.dir.path().join("shoal.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lb,
                env!("CARGO_BIN_EXE_shoal"),
                "run",
            ])
            .args([
                "--node-id",
                "lb1",
                "--listen",
                "127.0.0.1:7946",
                "--admin",
                "127.0.0.1:9100",
                "--insecure",
                "--single-node",
                "--source",
                "static",
                "--rules",
                self.rules_path().to_str().unwrap(),
                "--dataplane",
                "memory",
                "--source-filter",
                "nftables",
                "--resync-interval-s",
                "1",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.shoal = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoal.log")).unwrap_or_default()
    }

    /// Shoal's table in the replica namespace, read back through the crate.
    fn read_back(&self) -> Option<Vec<FilterRule>> {
        in_ns(&self.lb, || {
            let back = NftFirewall::open().unwrap().read().unwrap()?;
            assert_eq!(back.foreign, 0);
            Some(back.rules)
        })
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; shoal log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn service(name: &str, vip: &str, ranges: &[&str]) -> String {
    let ranges: Vec<String> = ranges.iter().map(|r| format!("'{r}'")).collect();
    let backend = if vip.contains(':') {
        "2001:db8:ff::2"
    } else {
        "198.18.0.2"
    };
    format!(
        "[[service]]\nname='{name}'\nvip='{vip}'\nport={PORT}\nsource_ranges=[{}]\n[[service.backend]]\naddress='{backend}'\n\n",
        ranges.join(",")
    )
}

fn expected(filters: &[(&str, &[&str])]) -> Vec<FilterRule> {
    rules(
        &filters
            .iter()
            .map(|(vip, ranges)| SourceFilter {
                vip: vip.parse().unwrap(),
                protocol: Protocol::Tcp,
                port: PORT,
                ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            })
            .collect::<Vec<_>>(),
    )
}

fn replace_filter_count(lab: &Lab) -> u64 {
    let out = in_ns(&lab.lb, || {
        let mut s = TcpStream::connect("127.0.0.1:9100").ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .unwrap_or_default();
    out.lines()
        .find(|l| {
            l.starts_with("shoal_reconcile_ops_total{") && l.contains("op=\"replace_filter\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn only_the_allowed_client_reaches_the_vip_until_the_range_is_removed() {
    if !have_root() {
        eprintln!("SKIPPED: needs root for network namespaces and nftables");
        return;
    }
    let mut lab = Lab::new();
    lab.serve();
    let v4: SocketAddr = format!("{VIP4}:{PORT}").parse().unwrap();
    let v6: SocketAddr = format!("[{VIP6}]:{PORT}").parse().unwrap();
    let other: SocketAddr = format!("{VIP4}:{OTHER_PORT}").parse().unwrap();
    // Before Shoal: both clients reach every listener (the topology works).
    for ns in [&lab.allowed, &lab.denied] {
        for to in [v4, v6, other] {
            assert_eq!(connect(ns, to), Seen::Answered, "{ns} -> {to} before shoal");
        }
    }

    let restricted = [
        (VIP4, &["198.18.20.0/30"][..]),
        (VIP6, &["2001:db8:20::/64"][..]),
    ];
    lab.write_rules(&format!(
        "{}{}",
        service("web", VIP4, restricted[0].1),
        service("web6", VIP6, restricted[1].1)
    ));
    lab.start_shoal();
    lab.wait_for("the filter in the kernel", || {
        lab.read_back() == Some(expected(&restricted))
    });

    assert_eq!(connect(&lab.allowed, v4), Seen::Answered);
    assert_eq!(connect(&lab.allowed, v6), Seen::Answered);
    assert_eq!(connect(&lab.denied, v4), Seen::Dropped);
    assert_eq!(connect(&lab.denied, v6), Seen::Dropped);
    assert_eq!(
        connect(&lab.denied, other),
        Seen::Answered,
        "a port no service names is not filtered"
    );

    // Resync passes (every second) leave the table alone: written once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.read_back(), Some(expected(&restricted)));
    assert_eq!(replace_filter_count(&lab), 1, "{}", lab.log());

    // The IPv4 service loses its range: everyone may connect to it; IPv6 stays restricted.
    lab.write_rules(&format!(
        "{}{}",
        service("web", VIP4, &[]),
        service("web6", VIP6, restricted[1].1)
    ));
    lab.wait_for("the denied client reaching the IPv4 VIP", || {
        connect(&lab.denied, v4) == Seen::Answered
    });
    assert_eq!(lab.read_back(), Some(expected(&restricted[1..])));
    assert_eq!(connect(&lab.denied, v6), Seen::Dropped);

    // The restricted service goes: the table goes with it.
    lab.write_rules(&service("web", VIP4, &[]));
    lab.wait_for("the table removed", || lab.read_back().is_none());
    assert_eq!(connect(&lab.denied, v6), Seen::Answered);
    assert!(
        lab.log().contains("source-range filter removed"),
        "{}",
        lab.log()
    );
}
