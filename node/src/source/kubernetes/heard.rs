//! When the API server last said anything about each watched kind.
//!
//! kube's watcher consumes BOOKMARK events and the end of each watch itself and yields nothing
//! for them, so from its events alone a quiet but healthy kind (no Service changed for an
//! hour) cannot be told from a watch the API server went silent on. [`tap`] wraps the client:
//! every chunk of a GET response on a watched collection (list or watch), and the clean end
//! of one, counts as word about that kind. Writes are not counted: they say nothing about
//! whether a watch still delivers.

use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Kinds by where their collection lives: (API group, "" for the core group; plural).
type Collections = BTreeMap<(String, String), &'static str>;

#[derive(Clone, Debug)]
pub struct Heard {
    collections: Arc<Collections>,
    last: Latest,
    /// When a GET of each kind's collection was last answered with a success status (the
    /// headers: a re-watch of a quiet kind says nothing more for minutes).
    answered: Latest,
}

/// The latest instant noted per kind, shared between the client's tap and the source's loop.
#[derive(Clone, Debug, Default)]
struct Latest(Arc<Mutex<BTreeMap<&'static str, Instant>>>);

impl Latest {
    fn note(&self, kind: &'static str, now: Instant) {
        // A poisoned lock only means another holder panicked mid-insert of an Instant.
        let mut latest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let t = latest.entry(kind).or_insert(now);
        *t = (*t).max(now);
    }

    fn all(&self) -> Vec<(&'static str, Instant)> {
        let latest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        latest.iter().map(|(k, t)| (*k, *t)).collect()
    }
}

impl Heard {
    /// Watches `kinds` ((group, plural, kind)), each counted as heard from `now`.
    pub fn new(kinds: &[(&str, &str, &'static str)], now: Instant) -> Self {
        let last = Latest::default();
        for (_, _, kind) in kinds {
            last.note(kind, now);
        }
        Heard {
            collections: Arc::new(
                kinds
                    .iter()
                    .map(|(g, p, k)| ((g.to_string(), p.to_string()), *k))
                    .collect(),
            ),
            last,
            answered: Latest::default(),
        }
    }

    /// A GET of `kind`'s collection was answered with a success status at `now`.
    pub fn answered(&self, kind: &'static str, now: Instant) {
        self.answered.note(kind, now);
    }

    /// Each kind and when a GET of it was last answered with a success status.
    pub fn last_answered(&self) -> Vec<(&'static str, Instant)> {
        self.answered.all()
    }

    pub fn heard(&self, kind: &'static str, now: Instant) {
        self.last.note(kind, now);
    }

    /// Each watched kind and when it was last heard from.
    pub fn last(&self) -> Vec<(&'static str, Instant)> {
        self.last.all()
    }

    fn kind_of(&self, path: &str) -> Option<&'static str> {
        let (group, plural) = collection(path)?;
        self.collections
            .get(&(group.to_string(), plural.to_string()))
            .copied()
    }
}

/// The (group, plural) of a collection path: `/api/v1[/namespaces/<ns>]/<plural>` (core
/// group "") or `/apis/<group>/<version>[/namespaces/<ns>]/<plural>`. `None` for one object
/// (`.../<plural>/<name>`) or anything else.
pub fn collection(path: &str) -> Option<(&str, &str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    match rest {
        [plural] | ["namespaces", _, plural] if !plural.is_empty() => Some((group, plural)),
        _ => None,
    }
}

/// `client`, noting in `heard` what each GET of a watched collection receives.
pub fn tap(client: kube::Client, heard: Heard) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
        let client = client.clone();
        let heard = heard.clone();
        async move {
            let kind = (req.method() == hyper::Method::GET)
                .then(|| heard.kind_of(req.uri().path()))
                .flatten();
            let response = client.send(req).await?;
            if let Some(kind) = kind.filter(|_| response.status().is_success()) {
                heard.answered(kind, Instant::now());
            }
            Ok::<_, kube::Error>(response.map(|body| Tapped { body, kind, heard }))
        }
    });
    kube::Client::new(service, namespace)
}

/// A response body that notes each data chunk and its clean end for `kind`, if any.
struct Tapped {
    body: kube::client::Body,
    kind: Option<&'static str>,
    heard: Heard,
}

impl Body for Tapped {
    type Data = Bytes;
    type Error = kube::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, kube::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(kind) = self.kind {
            // An error is no word: kube reports it, and the loop records it as a failure.
            let word = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame.is_data(),
                Poll::Ready(None) => true,
                _ => false,
            };
            if word {
                self.heard.heard(kind, Instant::now());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_found_in_both_path_forms() {
        assert_eq!(collection("/api/v1/services"), Some(("", "services")));
        assert_eq!(
            collection("/api/v1/namespaces/app/services"),
            Some(("", "services"))
        );
        assert_eq!(
            collection("/apis/discovery.k8s.io/v1/namespaces/app/endpointslices"),
            Some(("discovery.k8s.io", "endpointslices"))
        );
        assert_eq!(
            collection("/apis/shoal.io/v1alpha1/shoalpools"),
            Some(("shoal.io", "shoalpools"))
        );
        // One object, its status, a namespace: not a collection of a watched kind.
        assert_eq!(collection("/api/v1/namespaces/app/services/web"), None);
        assert_eq!(
            collection("/apis/shoal.io/v1alpha1/shoalpools/p/status"),
            None
        );
        assert_eq!(collection("/api/v1/namespaces/services"), None);
        assert_eq!(collection("/version"), None);
    }

    #[test]
    fn heard_keeps_the_latest_time_per_kind() {
        let t0 = Instant::now();
        let h = Heard::new(
            &[
                ("", "services", "Service"),
                ("discovery.k8s.io", "endpointslices", "EndpointSlice"),
            ],
            t0,
        );
        assert_eq!(h.kind_of("/api/v1/namespaces/a/services"), Some("Service"));
        assert_eq!(h.kind_of("/apis/other.io/v1/services"), None);
        h.heard("Service", t0 + std::time::Duration::from_secs(3));
        h.heard("Service", t0 + std::time::Duration::from_secs(1));
        assert_eq!(
            h.last(),
            vec![
                ("EndpointSlice", t0),
                ("Service", t0 + std::time::Duration::from_secs(3))
            ]
        );
    }
}
