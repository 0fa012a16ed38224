//! A node whose process was frozen: what it sends when it resumes.

mod common;

use common::*;
use shoal_gossip::Mesh;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What the test asks of the node on the runtime it can freeze.
enum Ask {
    Freeze(Duration),
    Leave,
}

/// Chitchat's gossip timer is a tokio interval, which runs the rounds a frozen process missed
/// back to back when it resumes: 3 s frozen is ~30 rounds at once, each a Syn to every peer, and
/// each Syn answered with the whole delta a node that far behind needs. At 10,000 health keys
/// that burst made the two healthy nodes judge each other dead (docs/internals/gossip.md,
/// Transport). The transport lets a burst of 3 out per peer, then one per round
/// (`transport/pace.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_node_sends_the_rounds_it_missed_as_one() {
    let ca = new_ca();
    let nodes = converged_cluster(&ca, 2).await;
    let seed = nodes[0].listen_addr();
    let security = tls_for(&ca, "n2");
    // n2 runs on a runtime of one thread of its own: blocking that thread freezes every task of
    // the node at once, as SIGSTOP does to a process.
    let (started_tx, started_rx) = oneshot::channel();
    let (ask_tx, mut ask_rx) = mpsc::unbounded_channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("n2's runtime");
        runtime.block_on(async move {
            let node = Mesh::start(config("n2", any_port(), &[seed], security))
                .await
                .expect("start n2");
            let _ = started_tx.send(node.clone());
            while let Some(ask) = ask_rx.recv().await {
                match ask {
                    Ask::Freeze(d) => std::thread::sleep(d),
                    Ask::Leave => break,
                }
            }
            node.shutdown().await;
        });
    });
    let n2 = started_rx.await.expect("n2 started");
    let all = [&nodes[0], &nodes[1], &n2];
    wait_for("n2 counted by every node", Duration::from_secs(10), || {
        converged(&all, "n0")
    })
    .await;

    let paced_before = n2.traffic().rounds_paced;
    ask_tx
        .send(Ask::Freeze(Duration::from_secs(3)))
        .expect("ask n2 to freeze");
    let two = [&nodes[0], &nodes[1]];
    wait_for("n0 and n1 see n2 gone", Duration::from_secs(5), || {
        two.iter()
            .all(|n| !n.live_members().iter().any(|m| m.as_str() == "n2"))
    })
    .await;
    wait_for("n2 back with every node", Duration::from_secs(10), || {
        converged(&all, "n0")
    })
    .await;
    let paced = n2.traffic().rounds_paced - paced_before;
    // ~30 missed rounds, to two peers and the seed: all but the burst of 3 per peer is held
    // back (a slow resume refills the buckets a little and lets a few more out).
    assert!(
        paced >= 30,
        "the burst of missed rounds went out: only {paced} Syns were paced"
    );

    ask_tx.send(Ask::Leave).expect("ask n2 to leave");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("n2's thread");
    shutdown_all(nodes).await;
}
