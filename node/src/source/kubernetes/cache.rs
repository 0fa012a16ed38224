//! An in-memory copy of one watched kind, fed by watcher events, tolerant of malformed objects.
//!
//! Objects arrive untyped and are decoded one by one, so a single object the typed model
//! rejects becomes a [`Problem`] instead of failing the whole list (which would stall the
//! watcher and with it every other Service). A relist (`Init` .. `InitDone`) is buffered and
//! swapped in whole, so readers never see a half-listed state. Objects are kept behind an `Arc`:
//! a pass hands them to the status writer without copying them.

use super::translate::{ObjectId, Problem};
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Entry<K> {
    Ok(Arc<K>),
    Malformed(Problem),
}

#[derive(Debug)]
pub struct ObjectCache<K> {
    kind: &'static str,
    api_version: &'static str,
    live: BTreeMap<String, Entry<K>>,
    relisting: Option<BTreeMap<String, Entry<K>>>,
    synced: bool,
}

impl<K: DeserializeOwned + Clone> ObjectCache<K> {
    pub fn new(kind: &'static str, api_version: &'static str) -> Self {
        ObjectCache {
            kind,
            api_version,
            live: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }

    /// True once a first complete list has been seen; before that the cache must not be
    /// published from (an empty cache would withdraw every Service).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies one watcher event; returns whether the visible content may have changed.
    pub fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                let (key, entry) = self.decode(obj);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, entry);
                false
            }
            Event::InitDone => {
                self.live = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(obj) => {
                let (key, entry) = self.decode(obj);
                self.live.insert(key, entry);
                true
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                self.live.remove(&key).is_some()
            }
        }
    }

    /// The objects that decoded, in key order (shared, not copied).
    pub fn objects(&self) -> Vec<Arc<K>> {
        self.live
            .values()
            .filter_map(|e| match e {
                Entry::Ok(k) => Some(k.clone()),
                Entry::Malformed(_) => None,
            })
            .collect()
    }

    /// The objects that decoded, in key order, without copying them.
    pub fn refs(&self) -> Vec<&K> {
        self.live
            .values()
            .filter_map(|e| match e {
                Entry::Ok(k) => Some(&**k),
                Entry::Malformed(_) => None,
            })
            .collect()
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.live.values().filter_map(|e| match e {
            Entry::Malformed(p) => Some(p),
            Entry::Ok(_) => None,
        })
    }

    fn decode(&self, obj: DynamicObject) -> (String, Entry<K>) {
        let key = key_of(&obj);
        let id = ObjectId {
            kind: self.kind,
            api_version: self.api_version,
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            uid: obj.metadata.uid.clone(),
        };
        let decoded = serde_json::to_value(&obj).and_then(serde_json::from_value::<K>);
        let entry = match decoded {
            Ok(k) => Entry::Ok(Arc::new(k)),
            Err(e) => Entry::Malformed(Problem {
                object: id,
                reason: "MalformedObject",
                message: format!("{} skipped, it does not decode: {e}", self.kind),
            }),
        };
        (key, entry)
    }
}

fn key_of(obj: &DynamicObject) -> String {
    format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn obj(name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ns", "name": name, "uid": format!("u-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn relist_is_swapped_in_whole_and_malformed_objects_are_problems() {
        let mut c: ObjectCache<Service> = ObjectCache::new("Service", "v1");
        assert!(!c.synced());
        c.apply(Event::Init);
        c.apply(Event::InitApply(obj("a", json!({"type": "LoadBalancer"}))));
        c.apply(Event::InitApply(obj("bad", json!({"ports": "not-a-list"}))));
        assert!(c.objects().is_empty(), "nothing visible before InitDone");
        assert!(c.apply(Event::InitDone));
        assert!(c.synced());
        assert_eq!(c.objects().len(), 1);
        let p: Vec<_> = c.problems().collect();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].object.name.as_str(), p[0].reason),
            ("bad", "MalformedObject")
        );

        // A relist that no longer contains `a` drops it.
        c.apply(Event::Init);
        c.apply(Event::InitApply(obj("b", json!({}))));
        c.apply(Event::InitDone);
        let names: Vec<_> = c
            .objects()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(c.problems().count(), 0);

        assert!(c.apply(Event::Delete(obj("b", json!({})))));
        assert!(!c.apply(Event::Delete(obj("b", json!({})))));
        assert!(c.objects().is_empty());
    }
}
