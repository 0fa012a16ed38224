//! CA rotation without a split mesh: nodes trust the old and the new CA together while leaves
//! are replaced (docs/security.md). Each stage of the rollout is a mix of nodes that have and
//! have not been rolled yet; every mix must form one cluster. Without the bundle, it splits.

mod common;

use common::*;
use shoal_gossip::certs::{create_ca, issue_node_cert, ClusterCa};
use shoal_gossip::{Mesh, Security, TlsMaterial};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Leaf {
    Old,
    New,
}

#[derive(Clone, Copy, Debug)]
enum Trust {
    Old,
    Both,
    New,
}

fn material(old: &ClusterCa, new: &ClusterCa, id: &str, leaf: Leaf, trust: Trust) -> Security {
    let issued = match leaf {
        Leaf::Old => issue_node_cert(old, id),
        Leaf::New => issue_node_cert(new, id),
    }
    .expect("cert");
    let ca_pem = match trust {
        Trust::Old => old.cert_pem().to_string(),
        Trust::New => new.cert_pem().to_string(),
        Trust::Both => format!("{}{}", old.cert_pem(), new.cert_pem()),
    };
    Security::MutualTls(TlsMaterial { ca_pem, ..issued })
}

/// Starts n0, n1, n2 with the given (leaf, trust), seeded with n0; true if they form one
/// cluster with publisher n0 within `timeout`.
async fn forms_one_cluster(mix: [(Leaf, Trust); 3], timeout: Duration) -> bool {
    let (old, new) = (create_ca(CLUSTER).unwrap(), create_ca(CLUSTER).unwrap());
    let mut nodes: Vec<Node> = Vec::new();
    for (i, (leaf, trust)) in mix.into_iter().enumerate() {
        let id = format!("n{i}");
        let seeds: Vec<_> = nodes.first().map(|n| n.listen_addr()).into_iter().collect();
        let security = material(&old, &new, &id, leaf, trust);
        nodes.push(
            Mesh::start(config(&id, any_port(), &seeds, security))
                .await
                .expect("start"),
        );
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let start = tokio::time::Instant::now();
    let mut ok = false;
    while start.elapsed() < timeout && !ok {
        ok = converged(&all, "n0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown_all(nodes).await;
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_ca_rotation_is_one_cluster() {
    let _serial = SERIAL.lock().await;
    use Leaf as L;
    use Trust as T;
    let stages = [
        // 1. The bundle rolls out; leaves are still the old CA's.
        [(L::Old, T::Old), (L::Old, T::Both), (L::Old, T::Both)],
        // 2. New leaves roll out; everyone trusts both CAs.
        [(L::Old, T::Both), (L::New, T::Both), (L::New, T::Both)],
        // 3. The old CA is dropped; every leaf is already new.
        [(L::New, T::Both), (L::New, T::New), (L::New, T::New)],
    ];
    for (i, mix) in stages.into_iter().enumerate() {
        assert!(
            forms_one_cluster(mix, Duration::from_secs(15)).await,
            "stage {} of the rotation split the mesh: {mix:?}",
            i + 1
        );
    }
    // Skipping the bundle (new leaves and the new CA only, next to old nodes) splits the mesh.
    let split = [(L::Old, T::Old), (L::New, T::New), (L::Old, T::Old)];
    assert!(
        !forms_one_cluster(split, Duration::from_secs(4)).await,
        "a rotation without the bundle should split the mesh"
    );
}
