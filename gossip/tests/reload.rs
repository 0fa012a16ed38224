//! Reloading a node's certificate, key and trusted CAs while it runs (`Mesh::reload_tls`): new
//! handshakes use the new material, established connections go on, and material the node would
//! refuse at start is refused on reload with the old one kept. Walks a full CA rotation on a
//! running cluster (docs/security.md), the way cert-manager's csi-driver renews files on disk.

mod common;

use common::*;
use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa};
use shoal_gossip::{Mesh, MeshError, NodeId, Security, TlsMaterial};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Trust {
    Old,
    Both,
    New,
}

fn material(
    leaf_ca: &ClusterCa,
    id: &str,
    old: &ClusterCa,
    new: &ClusterCa,
    trust: Trust,
) -> TlsMaterial {
    let issued = issue_node_cert(leaf_ca, id).expect("cert");
    let ca_pem = match trust {
        Trust::Old => old.cert_pem().to_string(),
        Trust::New => new.cert_pem().to_string(),
        Trust::Both => format!("{}{}", old.cert_pem(), new.cert_pem()),
    };
    TlsMaterial { ca_pem, ..issued }
}

fn sees(node: &Node, id: &str) -> bool {
    node.live_members().contains(&NodeId::new(id))
}

/// `cond` holds at every check for `span` (checked every 50 ms).
async fn holds_for(span: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < span {
        if !cond() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_by_reload_keeps_one_cluster() {
    let _serial = SERIAL.lock().await;
    let (old, new) = (create_ca(CLUSTER).unwrap(), create_ca(CLUSTER).unwrap());
    let long = Duration::from_secs(20);

    // A. Three nodes on the old CA.
    let mut nodes: Vec<Node> = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let seeds: Vec<_> = nodes.first().map(|n| n.listen_addr()).into_iter().collect();
        let m = material(&old, id, &old, &new, Trust::Old);
        nodes.push(
            Mesh::start(config(id, any_port(), &seeds, Security::MutualTls(m)))
                .await
                .expect("start"),
        );
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for("three nodes on the old CA", long, || converged(&all, "n0")).await;
    }

    // B. Material the node would refuse at start is refused on reload.
    let refused = |r: Result<(), MeshError>| r.expect_err("bad material accepted").to_string();
    let other_id = material(&new, "n2", &old, &new, Trust::Both);
    let err = refused(nodes[1].reload_tls(&other_id));
    assert!(err.contains("names node") && err.contains("n2"), "{err}");
    let mut mismatched = material(&old, "n1", &old, &new, Trust::Both);
    mismatched.key_pem = issue_node_cert(&old, "n1").unwrap().key_pem;
    let err = refused(nodes[1].reload_tls(&mismatched));
    assert!(err.contains("node.pem/node.key"), "{err}");
    let garbage = TlsMaterial {
        ca_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
        ..material(&old, "n1", &old, &new, Trust::Old)
    };
    let err = refused(nodes[1].reload_tls(&garbage));
    assert!(err.contains("ca.pem"), "{err}");

    // C. n0 moves to the new CA alone (new leaf, trusts only the new CA). A new handshake between
    // it and the others would now fail both ways: the cluster staying whole shows that the
    // established connections go on, and a publish still reaches everyone over them.
    nodes[0]
        .reload_tls(&material(&new, "n0", &old, &new, Trust::New))
        .expect("reload n0");
    {
        let all: Vec<&Node> = nodes.iter().collect();
        assert!(
            holds_for(Duration::from_secs(3), || converged(&all, "n0")).await,
            "a reload cut established connections"
        );
        let v = publish_when_ready(&nodes[0], Table::small("after-reload")).await;
        wait_for("the publish over old connections", long, || {
            all_hold(&all, &v)
        })
        .await;
    }

    // D. The others take new leaves and trust both CAs; a new node that has only the new
    // certificate and trusts only the new CA joins: every handshake it makes uses reloaded material.
    for (i, node) in nodes.iter().enumerate().skip(1) {
        node.reload_tls(&material(&new, &format!("n{i}"), &old, &new, Trust::Both))
            .expect("reload");
    }
    let n3 = material(&new, "n3", &old, &new, Trust::New);
    let seed = nodes[1].listen_addr();
    nodes.push(
        Mesh::start(config("n3", any_port(), &[seed], Security::MutualTls(n3)))
            .await
            .expect("start n3"),
    );
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for("n3 (new CA only) joins the reloaded cluster", long, || {
            converged(&all, "n0")
        })
        .await;
    }

    // E. The old CA is dropped everywhere: a node with an old leaf (trusting both CAs, so only
    // the cluster's refusal can stop it) never joins, while the cluster stays whole.
    for (i, node) in nodes.iter().enumerate().skip(1).take(2) {
        node.reload_tls(&material(&new, &format!("n{i}"), &old, &new, Trust::New))
            .expect("reload");
    }
    let stale = material(&old, "n4", &old, &new, Trust::Both);
    let seeds: Vec<_> = nodes.iter().map(|n| n.listen_addr()).collect();
    let n4: Node = Mesh::start(config("n4", any_port(), &seeds, Security::MutualTls(stale)))
        .await
        .expect("start n4");
    {
        let all: Vec<&Node> = nodes.iter().collect();
        assert!(
            holds_for(Duration::from_secs(4), || converged(&all, "n0")
                && nodes.iter().all(|n| !sees(n, "n4")))
            .await,
            "a node with a leaf of the dropped CA got in, or the cluster split"
        );
    }
    n4.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_mesh_has_nothing_to_reload() {
    let _serial = SERIAL.lock().await;
    let ca = new_ca();
    let node = Mesh::<Table>::start(config("n0", any_port(), &[], Security::Insecure))
        .await
        .expect("start");
    let err = node
        .reload_tls(&issue_node_cert(&ca, "n0").unwrap())
        .expect_err("insecure reload accepted");
    assert!(err.to_string().contains("insecure"), "{err}");
    node.shutdown().await;
}
