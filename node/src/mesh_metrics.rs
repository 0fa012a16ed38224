//! Prometheus counters of the mesh: attacks (refused and timed-out handshakes, Retry packets,
//! identity mismatches, oversized and malformed messages, duplicate node ids; issue #15) and the
//! copies of the table this node served to peers (issue #16: the publisher should send only a
//! few per head), with their bytes, full copies and patches (delta transfer) apart.
//!
//! The mesh counts; this copies its totals into counters when `/metrics` is read.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_gossip::{Document, Mesh, RoleReason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabel {
    pub form: &'static str,
}

#[derive(Clone, Default)]
pub struct MeshMetrics {
    pub handshakes_refused: Family<ReasonLabel, Counter>,
    pub handshakes_timed_out: Counter,
    pub handshakes_retried: Counter,
    pub identity_mismatches: Counter,
    pub reflected_gossip: Counter,
    pub oversized_messages: Counter,
    pub malformed_gossip: Counter,
    pub rounds_paced: Counter,
    pub duplicate_ids: Counter,
    pub refused_as_duplicate: Gauge,
    pub documents_served: Counter,
    pub document_bytes_served: Family<FormLabel, Counter>,
    pub delta_failures: Counter,
}

/// Raises `counter` to `total` (the mesh's counters only rise).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl MeshMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "shoal_mesh_handshakes_refused",
            "Incoming QUIC handshakes refused, by reason (full: no slot; source_busy / source_rate: per-source limits; tls: the TLS handshake failed)",
            self.handshakes_refused.clone(),
        );
        r.register(
            "shoal_mesh_handshakes_timed_out",
            "Incoming handshakes from a validated address that did not finish in time",
            self.handshakes_timed_out.clone(),
        );
        r.register(
            "shoal_mesh_handshakes_retried",
            "QUIC Retry packets sent to sources that had not proven their address",
            self.handshakes_retried.clone(),
        );
        r.register(
            "shoal_mesh_identity_mismatches",
            "Connections and gossip messages dropped because the peer's certificate does not name the node id it speaks for",
            self.identity_mismatches.clone(),
        );
        r.register(
            "shoal_mesh_reflected_gossip",
            "Gossip messages that were this node's own, sent back from another address (a seed or peer address that leads back to this node), dropped",
            self.reflected_gossip.clone(),
        );
        r.register(
            "shoal_mesh_oversized_messages",
            "Gossip messages above the size cap, dropped",
            self.oversized_messages.clone(),
        );
        r.register(
            "shoal_mesh_malformed_gossip",
            "Gossip payloads or session-stream frames that did not decode, dropped (a session stream sending one is stopped)",
            self.malformed_gossip.clone(),
        );
        r.register(
            "shoal_mesh_gossip_rounds_paced",
            "Syns of this node's own gossip rounds not sent because the peer already had its burst (3 back to back, then one per gossip interval): the rounds a freeze or CPU starvation made it miss, run back to back",
            self.rounds_paced.clone(),
        );
        r.register(
            "shoal_mesh_duplicate_ids",
            "Node ids seen with live processes at two addresses",
            self.duplicate_ids.clone(),
        );
        r.register(
            "shoal_mesh_refused_as_duplicate",
            "1 while this node refuses to serve because an older live process has its node id",
            self.refused_as_duplicate.clone(),
        );
        r.register(
            "shoal_mesh_documents_served",
            "Copies of the rule table this node sent to peers that fetched it",
            self.documents_served.clone(),
        );
        r.register(
            "shoal_mesh_document_bytes_served",
            "Bytes of the rule table this node sent to peers, by form (full: whole copies; delta: patches against a version the peer held)",
            self.document_bytes_served.clone(),
        );
        r.register(
            "shoal_mesh_delta_failures",
            "Patches this node received that did not apply or did not match the digest (it then fetched the full table)",
            self.delta_failures.clone(),
        );
    }

    pub fn refresh<D: Document>(&self, mesh: &Mesh<D>) {
        let t = mesh.traffic();
        let by_reason = [
            ("full", t.handshakes_refused_full),
            ("source_busy", t.handshakes_refused_source_busy),
            ("source_rate", t.handshakes_refused_source_rate),
            (
                "tls",
                t.handshakes_refused.saturating_sub(
                    t.handshakes_refused_full
                        + t.handshakes_refused_source_busy
                        + t.handshakes_refused_source_rate,
                ),
            ),
        ];
        for (reason, total) in by_reason {
            catch_up(
                &self
                    .handshakes_refused
                    .get_or_create(&ReasonLabel { reason }),
                total,
            );
        }
        catch_up(&self.handshakes_timed_out, t.handshakes_timed_out);
        catch_up(&self.handshakes_retried, t.handshakes_retried);
        catch_up(&self.identity_mismatches, t.identity_mismatches);
        catch_up(&self.reflected_gossip, t.reflected_gossip);
        catch_up(&self.oversized_messages, t.oversized_messages);
        catch_up(&self.malformed_gossip, t.malformed_gossip);
        catch_up(&self.rounds_paced, t.rounds_paced);
        catch_up(&self.duplicate_ids, mesh.duplicate_ids_seen());
        let served = mesh.documents_served_by_form();
        catch_up(&self.documents_served, served.copies);
        for (form, total) in [("full", served.full_bytes), ("delta", served.delta_bytes)] {
            catch_up(
                &self
                    .document_bytes_served
                    .get_or_create(&FormLabel { form }),
                total,
            );
        }
        catch_up(&self.delta_failures, served.delta_failures);
        self.refused_as_duplicate.set(i64::from(matches!(
            mesh.role_reason(),
            RoleReason::DuplicateId { .. }
        )));
    }
}
