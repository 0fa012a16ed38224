//! Attacks from the security probe (issue #15), tried for real over QUIC on loopback: an
//! impostor with another node's certificate, a second process with the same node id, a
//! handshake flood while a new member joins, a node whose seeds never answer, a certificate
//! of another cluster from the same CA.

mod common;
#[path = "support/dialer.rs"]
mod dialer;
#[path = "support/flood.rs"]
mod flood;

use common::*;
use shoal_gossip::certs::issue_node_cert;
use shoal_gossip::{Mesh, NodeId, Role, RoleReason, Security, Timing};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

fn at(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 0))
}

async fn start_named(
    ca: &shoal_gossip::certs::ClusterCa,
    ids: &[&str],
    security: impl Fn(shoal_gossip::TlsMaterial) -> Security,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for id in ids {
        let seeds: Vec<SocketAddr> = nodes.first().map(|n| n.listen_addr()).into_iter().collect();
        let material = issue_node_cert(ca, id).expect("cert");
        nodes.push(
            Mesh::start(config(id, any_port(), &seeds, security(material)))
                .await
                .expect("start"),
        );
    }
    nodes
}

fn sees(node: &Node, id: &str) -> bool {
    node.live_members().iter().any(|m| m.as_str() == id)
}

/// Runs the impostor scenario: n1..n4 converged, then a process with n4's certificate runs as
/// `n0` (the lowest id). Returns whether any honest node ever took n0 as publisher or member
/// within `watch`, and the honest nodes' identity-mismatch count.
async fn impostor_run(
    honest_security: fn(shoal_gossip::TlsMaterial) -> Security,
    watch: Duration,
) -> (bool, u64) {
    let ca = new_ca();
    let honest = start_named(&ca, &["n1", "n2", "n3", "n4"], honest_security).await;
    let all: Vec<&Node> = honest.iter().collect();
    wait_for("n1..n4 converge", Duration::from_secs(15), || {
        converged(&all, "n1")
    })
    .await;
    let seed = honest[0].listen_addr();
    let n4_cert = issue_node_cert(&ca, "n4").expect("cert");
    // The honest binary refuses to speak for an id its certificate does not name...
    let refused = Mesh::<Table>::start(config(
        "n0",
        any_port(),
        &[seed],
        Security::MutualTls(n4_cert.clone()),
    ))
    .await;
    let err = refused
        .err()
        .expect("n0 with n4's certificate must not start");
    assert!(err.to_string().contains("names node"), "{err}");
    // ...so the impostor skips that check (a patched binary does the same).
    let impostor = Mesh::<Table>::start(config(
        "n0",
        any_port(),
        &[seed],
        Security::ClusterIdentityOnly(n4_cert),
    ))
    .await
    .expect("impostor starts");
    let deadline = tokio::time::Instant::now() + watch;
    let mut taken_over = false;
    while tokio::time::Instant::now() < deadline && !taken_over {
        taken_over = honest.iter().any(|n| {
            sees(n, "n0") || n.view().publisher.as_ref().map(NodeId::as_str) == Some("n0")
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mismatches = honest.iter().map(|n| n.traffic().identity_mismatches).sum();
    impostor.shutdown().await;
    shutdown_all(honest).await;
    (taken_over, mismatches)
}

/// Broken behaviour 1: any holder of a node certificate could run as `n0` and publish. Now its
/// gossip is dropped (its certificate names n4) and it never counts anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_with_another_nodes_certificate_never_counts() {
    let _serial = SERIAL.lock().await;
    let (taken_over, mismatches) = impostor_run(Security::MutualTls, Duration::from_secs(5)).await;
    assert!(
        !taken_over,
        "an honest node took the impostor n0 as member or publisher"
    );
    assert!(mismatches > 0, "identity mismatches were not counted");
}

/// The same attack against a cluster that runs with cluster identity only (the old behaviour):
/// the impostor takes over, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cluster_identity_only_the_impostor_takes_over() {
    let _serial = SERIAL.lock().await;
    let (taken_over, _) =
        impostor_run(Security::ClusterIdentityOnly, Duration::from_secs(15)).await;
    assert!(
        taken_over,
        "the impostor should take over without node identity"
    );
}

/// Broken behaviour (a network probe, 2026-12-07): a certificate the cluster's CA issued for
/// *another* cluster name passed the listener's check, which asked only for the CA: through its
/// inbound connection the holder read the cluster's gossip, added a live member and, claiming
/// each node's id at an older generation, took every node out of service (docs/security.md
/// allows two clusters one CA when their names differ). The same dialer with the cluster's own
/// name is kept, so the test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_cluster_from_the_same_ca_is_refused() {
    let _serial = SERIAL.lock().await;
    let ca = new_ca();
    let n1 = start_named(&ca, &["n1"], Security::MutualTls).await;
    let to = n1[0].listen_addr();
    let watch = Duration::from_millis(500);
    let kept = dialer::kept(to, dialer::certificate(&ca, "n0", CLUSTER), watch).await;
    assert_eq!(kept, Ok(()), "a certificate of this cluster must be kept");
    let refused_before = n1[0].traffic().handshakes_refused;
    let other = dialer::kept(to, dialer::certificate(&ca, "n0", "other-cluster"), watch).await;
    let why = other.expect_err("a certificate of another cluster was kept");
    assert!(why.contains("closed"), "{why}");
    wait_for("the refusal is counted", Duration::from_secs(2), || {
        n1[0].traffic().handshakes_refused > refused_before
    })
    .await;
    shutdown_all(n1).await;
}

/// Broken behaviour 2: a second process with the publisher's id split the cluster. Now the
/// cluster keeps the older process, and the younger refuses to serve and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_keeps_the_older_and_the_younger_refuses() {
    let _serial = SERIAL.lock().await;
    let ca = new_ca();
    let nodes = converged_cluster(&ca, 3).await;
    let v1 = publish_when_ready(&nodes[0], Table::small("real")).await;
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("all hold v1", Duration::from_secs(10), || {
        all_hold(&all, &v1)
    })
    .await;
    let real_generation = nodes[1].view().members[0].generation;

    let twin = Mesh::<Table>::start(config(
        "n0",
        any_port(),
        &[nodes[1].listen_addr()],
        tls_for(&ca, "n0"),
    ))
    .await
    .expect("twin starts");
    wait_for(
        "the twin refuses as a duplicate",
        Duration::from_secs(15),
        || matches!(twin.role_reason(), RoleReason::DuplicateId { .. }),
    )
    .await;
    // For a while, with the twin live: nothing moves.
    for _ in 0..150 {
        assert_ne!(twin.role(), Role::Publisher);
        assert!(twin.publish(Table::small("twin")).is_err());
        assert_eq!(nodes[0].role(), Role::Publisher);
        // Every node, the twin included, answers for the cluster alike: n0 is the older
        // process, the publisher (the twin named n1, with itself in n0's place: a probe).
        let views = nodes
            .iter()
            .map(|n| (n.node_id().to_string(), n.view()))
            .chain([("the twin".to_string(), twin.view())]);
        for (who, view) in views {
            assert_eq!(
                view.publisher.as_ref().map(NodeId::as_str),
                Some("n0"),
                "{who} sees {view:#?}"
            );
            let n0 = view
                .members
                .iter()
                .find(|m| m.id.as_str() == "n0")
                .expect("n0");
            assert_eq!(
                (n0.generation, n0.listen, n0.role.clone()),
                (real_generation, nodes[0].listen_addr(), Role::Publisher),
                "{who} switched to the twin"
            );
        }
        for n in &nodes {
            assert_eq!(n.current().map(|c| c.version.clone()), Some(v1.clone()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(twin.role_reason(), RoleReason::DuplicateId { .. }));
    // The real publisher still publishes and everyone follows.
    let v2 = nodes[0].publish(Table::small("real-2")).expect("publish");
    wait_for("all hold v2", Duration::from_secs(10), || {
        all_hold(&all, &v2)
    })
    .await;
    twin.shutdown().await;
    shutdown_all(nodes).await;
}

/// Broken behaviour 3: a few half-open handshakes a second kept new nodes from joining. Now a
/// new member joins through a flood of 200 Initials/s from fresh ports, in both flavours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_joins_through_a_handshake_flood() {
    let _serial = SERIAL.lock().await;
    let ca = new_ca();
    let nodes = converged_cluster(&ca, 2).await;
    let target = nodes[0].listen_addr();
    let attacker: IpAddr = [127, 0, 0, 2].into();
    let mut joined = Vec::new();
    for (i, mode) in [flood::Mode::HalfOpen, flood::Mode::Validated]
        .into_iter()
        .enumerate()
    {
        let flood = flood::start(target, attacker, 200, mode);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let id = format!("n{}", i + 2);
        let ip = [127, 0, 0, 3 + i as u8];
        let start = tokio::time::Instant::now();
        let node = Mesh::start(config(&id, at(ip), &[target], tls_for(&ca, &id)))
            .await
            .expect("start");
        joined.push(node);
        let mut all: Vec<&Node> = nodes.iter().collect();
        all.extend(joined.iter());
        let took = wait_for(
            &format!("{id} joins during a {mode:?} flood"),
            Duration::from_secs(20),
            || converged(&all, "n0"),
        )
        .await;
        let sent = flood.sent.load(std::sync::atomic::Ordering::Relaxed);
        let validated = flood.validated.load(std::sync::atomic::Ordering::Relaxed);
        drop(flood);
        let t = nodes[0].traffic();
        eprintln!(
            "{mode:?}: {id} joined in {:?} (converged after {took:?}); flood sent {sent} Initials, {validated} validated; target: {t:?}",
            start.elapsed()
        );
        assert!(sent > 200, "the flood did not run");
        assert!(t.handshakes_retried > 0, "no Retry sent");
        if mode == flood::Mode::Validated {
            assert!(validated > 0, "the flooder never got past the Retry");
            assert!(
                t.handshakes_refused_source_busy + t.handshakes_refused_source_rate > 0,
                "per-source limits never refused the flooder"
            );
        }
    }
    shutdown_all(joined).await;
    shutdown_all(nodes).await;
}

/// Broken behaviour 3, second half: a node whose seeds never answer made itself a 1-node
/// cluster and publisher. Now it stays catching up; with `single_node` it may run alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hears_no_seed_does_not_publish_unless_single_node() {
    let _serial = SERIAL.lock().await;
    let ca = new_ca();
    // A seed address nothing answers on (bound, then dropped).
    let dead_seed = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port");
    let fast = Timing {
        startup_patience_ms: 1_000,
        ..Timing::default()
    };
    let mut cfg = config("n0", any_port(), &[dead_seed], tls_for(&ca, "n0"));
    cfg.timing = fast.clone();
    let alone = Mesh::<Table>::start(cfg).await.expect("start");
    let mut cfg = config("n1", any_port(), &[dead_seed], tls_for(&ca, "n1"));
    cfg.timing = Timing {
        single_node: true,
        ..fast
    };
    let single = Mesh::<Table>::start(cfg).await.expect("start");
    wait_for(
        "the single-node one publishes",
        Duration::from_secs(15),
        || single.role() == Role::Publisher,
    )
    .await;
    // Well past the patience: still catching up, and publishing is refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alone.role(), Role::CatchingUp);
    assert_eq!(alone.role_reason(), RoleReason::AwaitingSeeds);
    assert_eq!(single.role_reason().role(), Role::Publisher);
    assert!(alone.publish(Table::small("x")).is_err());
    alone.shutdown().await;
    single.shutdown().await;
}
