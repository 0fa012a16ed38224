//! Teeth through the wire: a fake node's admin API (plain HTTP on 127.0.0.1) whose dataplane
//! steps back to an older version, and a table that no edit wrote. The real observer parses
//! the answers and the real checkers must flag I1 and I4.

use shoal_chaos::check::monotonic::Monotonic;
use shoal_chaos::check::provenance::Provenance;
use shoal_chaos::check::Invariant;
use shoal_chaos::observer::Observer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers the three endpoints; the dataplane's seq follows `seqs` one poll at a time.
async fn fake_node(seqs: Vec<u64>, marker: u64) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let polls = polls.clone();
            let seqs = seqs.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let i = polls.load(Ordering::SeqCst) as usize;
                let seq = seqs[i.min(seqs.len() - 1)];
                let version = serde_json::json!({"epoch": 1, "seq": seq, "origin": "n1"});
                let body = if req.starts_with("GET /v1/cluster") {
                    serde_json::json!({"node": "n1", "publisher": "n1",
                        "head": {"epoch": 1, "seq": seq, "origin": "n1", "digest": format!("d{seq}"), "size_bytes": 1, "holders": ["n1"]},
                        "members": [{"id": "n1", "alive": true}], "health": {}})
                } else if req.starts_with("GET /v1/dataplane") {
                    // The dataplane answer closes one poll.
                    polls.fetch_add(1, Ordering::SeqCst);
                    serde_json::json!({"kind": "memory", "version": version, "matches_table": true})
                } else {
                    serde_json::json!({"version": version, "digest": format!("d{seq}"),
                        "table": {"services": [{"name": "marker", "backends": [{"weight": marker}]}]}})
                };
                let body = body.to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_node_stepping_back_is_caught_through_http() {
    let addr = fake_node(vec![1, 2, 3, 2, 4], 7).await;
    let observer = Observer::new(Duration::from_secs(2)).unwrap();
    let mut mono = Monotonic::default();
    let mut prov = Provenance::default();
    prov.wrote(7, vec!["marker".to_string()]);
    let mut found = Vec::new();
    for t in 0..5u64 {
        let o = observer.poll(&addr.to_string()).await.unwrap();
        found.extend(mono.observe("n1", 1, o.applied.as_ref(), t, Some(0)));
        found.extend(prov.observe(&o, "n1", Some(0)));
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].invariant, Invariant::I1);
    assert!(
        found[0].detail.contains("1.3@n1 to 1.2@n1"),
        "{}",
        found[0].detail
    );
}

#[tokio::test]
async fn a_table_no_edit_wrote_is_caught_through_http() {
    let addr = fake_node(vec![1], 99).await;
    let observer = Observer::new(Duration::from_secs(2)).unwrap();
    let mut prov = Provenance::default();
    prov.wrote(7, vec!["marker".to_string()]);
    let o = observer.poll(&addr.to_string()).await.unwrap();
    let found = prov.observe(&o, "n1", None);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].invariant, Invariant::I4);
}
