//! The cluster as the watches report it: a [`Cluster`] updated change by
//! change, with each kind's relist swapped in whole.
//!
//! Pure state, no I/O: the watch tasks feed it [`Change`]s, the store task
//! publishes [`Store::view`].

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::convert::{Kind, ObjectId};
use crate::policy::{manifests::Object, model::Cluster};

/// One object as a watch delivered it: converted, or refused with the
/// reason (`field: message`).
#[derive(Clone, Debug)]
pub struct Entry {
    /// Which object.
    pub id: ObjectId,
    /// The model's object, or why it was refused.
    pub object: Result<Object, String>,
}

/// What a watch reports (kube-runtime's `watcher::Event`, converted, plus
/// errors).
#[derive(Clone, Debug)]
pub enum Change {
    /// A (re)list starts: objects follow as [`Change::Listed`].
    ListStart,
    /// An object of the list.
    Listed(Entry),
    /// The list is complete: it replaces what the kind held.
    ListDone,
    /// An object was added or modified.
    Applied(Entry),
    /// An object was deleted.
    Deleted(ObjectId),
    /// The watch failed (it retries with backoff); cleared by the next
    /// change of the kind.
    Error(String),
}

/// What the store publishes.
#[derive(Clone, Debug, Default)]
pub struct KubeView {
    /// The cluster: every valid object, and for an object whose latest
    /// version was refused, its last valid version.
    pub cluster: Arc<Cluster>,
    /// Moves on with every change of `cluster`.
    pub generation: u64,
    /// Kinds whose first list is complete.
    pub listed: BTreeSet<Kind>,
    /// Completed lists, first ones included (a relist after a 410 Gone
    /// counts one more).
    pub lists: u64,
    /// Objects refused (`Kind namespace/name` → `field: message`).
    pub rejected: BTreeMap<String, String>,
    /// Watches failing now (kind → last error).
    pub errors: BTreeMap<Kind, String>,
}

impl KubeView {
    /// Whether every kind has been listed once: before, the cluster is
    /// partial and must not be enforced.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    /// The kinds not listed yet.
    pub fn missing(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.listed.contains(k))
            .collect()
    }
}

/// The store.
#[derive(Debug, Default)]
pub struct Store {
    cluster: Cluster,
    published: Arc<Cluster>,
    generation: u64,
    listed: BTreeSet<Kind>,
    lists: u64,
    relisting: BTreeMap<Kind, Vec<Entry>>,
    rejected: BTreeMap<ObjectId, String>,
    errors: BTreeMap<Kind, String>,
}

impl Store {
    /// Empty, nothing listed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a change; returns whether the view changed.
    pub fn handle(&mut self, kind: Kind, change: Change) -> bool {
        let cleared = !matches!(change, Change::Error(_)) && self.errors.remove(&kind).is_some();
        let changed = match change {
            Change::ListStart => {
                self.relisting.insert(kind, Vec::new());
                false
            }
            Change::Listed(entry) => {
                self.relisting.entry(kind).or_default().push(entry);
                false
            }
            Change::ListDone => self.list_done(kind),
            Change::Applied(entry) => self.apply(entry),
            Change::Deleted(id) => {
                let rejected = self.rejected.remove(&id).is_some();
                self.remove(&id) || rejected
            }
            Change::Error(err) => self.errors.insert(kind, err.clone()) != Some(err),
        };
        cleared || changed
    }

    /// The view (the cluster is copied once per generation).
    pub fn view(&mut self) -> KubeView {
        if *self.published != self.cluster {
            self.published = Arc::new(self.cluster.clone());
            self.generation += 1;
        }
        KubeView {
            cluster: self.published.clone(),
            generation: self.generation,
            listed: self.listed.clone(),
            lists: self.lists,
            rejected: self
                .rejected
                .iter()
                .map(|(id, e)| (id.to_string(), e.clone()))
                .collect(),
            errors: self.errors.clone(),
        }
    }

    fn list_done(&mut self, kind: Kind) -> bool {
        let entries = self.relisting.remove(&kind).unwrap_or_default();
        let ids: BTreeSet<&ObjectId> = entries.iter().map(|e| &e.id).collect();
        let gone: Vec<ObjectId> = self
            .ids(kind)
            .into_iter()
            .filter(|id| !ids.contains(id))
            .collect();
        let refused = entries.iter().filter(|e| e.object.is_err()).count();
        let total = entries.len();
        self.rejected
            .retain(|id, _| id.kind != kind || ids.contains(id));
        for id in &gone {
            self.remove(id);
        }
        for entry in entries {
            self.apply(entry);
        }
        let first = self.listed.insert(kind);
        self.lists += 1;
        tracing::info!(
            kind = %kind,
            objects = total,
            refused,
            removed = gone.len(),
            "{} of {} complete",
            if first { "first list" } else { "relist" },
            kind.plural()
        );
        // `lists` moved on, at least.
        true
    }

    /// Applies an object; a refused one keeps its last valid version.
    fn apply(&mut self, entry: Entry) -> bool {
        let Entry { id, object } = entry;
        match object {
            Ok(object) => {
                let rejected = self.rejected.remove(&id).is_some();
                self.insert(object) || rejected
            }
            Err(err) => {
                if self.rejected.get(&id) == Some(&err) {
                    return false;
                }
                let kept = self.contains(&id);
                tracing::warn!(
                    object = %id,
                    "refused from the Kubernetes API: {err}; {}",
                    if kept {
                        "its last valid version stays in force"
                    } else {
                        "skipped (the other objects are applied)"
                    }
                );
                self.rejected.insert(id, err);
                true
            }
        }
    }

    fn insert(&mut self, object: Object) -> bool {
        let c = &mut self.cluster;
        match object {
            Object::Namespace(ns) => {
                let name = ns.name().to_owned();
                let old = c.insert_namespace(ns);
                old.as_ref() != c.namespace(&name)
            }
            Object::Pod(pod) => {
                let key = pod.key();
                let old = c.insert_pod(pod);
                old.as_ref() != c.pod(&key)
            }
            Object::NetworkPolicy(policy) => {
                let key = policy.key();
                let old = c.insert_policy(policy);
                old.as_ref() != c.policy(&key)
            }
        }
    }

    fn remove(&mut self, id: &ObjectId) -> bool {
        let c = &mut self.cluster;
        match id.kind {
            Kind::Namespace => c.remove_namespace(&id.name).is_some(),
            Kind::Pod => c.remove_pod(&id.key()).is_some(),
            Kind::NetworkPolicy => c.remove_policy(&id.key()).is_some(),
        }
    }

    fn contains(&self, id: &ObjectId) -> bool {
        let c = &self.cluster;
        match id.kind {
            Kind::Namespace => c.namespace(&id.name).is_some(),
            Kind::Pod => c.pod(&id.key()).is_some(),
            Kind::NetworkPolicy => c.policy(&id.key()).is_some(),
        }
    }

    fn ids(&self, kind: Kind) -> Vec<ObjectId> {
        let c = &self.cluster;
        let namespaced = |key: crate::policy::ObjectKey| ObjectId {
            kind,
            namespace: Some(key.namespace),
            name: key.name,
        };
        match kind {
            Kind::Namespace => c
                .namespaces()
                .map(|n| ObjectId {
                    kind,
                    namespace: None,
                    name: n.name().to_owned(),
                })
                .collect(),
            Kind::Pod => c.pods().map(|p| namespaced(p.key())).collect(),
            Kind::NetworkPolicy => c.policies().map(|p| namespaced(p.key())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{model::Pod, Namespace, ObjectKey};

    fn pod_id(ns: &str, name: &str) -> ObjectId {
        ObjectId {
            kind: Kind::Pod,
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    fn pod(ns: &str, name: &str, app: &str) -> Entry {
        Entry {
            id: pod_id(ns, name),
            object: Ok(Object::Pod(Pod::new(ns, name, [("app", app)]))),
        }
    }

    fn refused(ns: &str, name: &str) -> Entry {
        Entry {
            id: pod_id(ns, name),
            object: Err("metadata.labels: bad".into()),
        }
    }

    fn app(view: &KubeView, ns: &str, name: &str) -> Option<String> {
        view.cluster
            .pod(&ObjectKey::new(ns, name))
            .map(|p| p.labels()["app"].clone())
    }

    fn list(s: &mut Store, kind: Kind, entries: Vec<Entry>) {
        s.handle(kind, Change::ListStart);
        for e in entries {
            s.handle(kind, Change::Listed(e));
        }
        s.handle(kind, Change::ListDone);
    }

    #[test]
    fn synced_after_every_kind_is_listed() {
        let mut s = Store::new();
        list(&mut s, Kind::Pod, vec![pod("n", "a", "x")]);
        let v = s.view();
        assert!(!v.synced());
        assert_eq!(v.missing(), vec![Kind::Namespace, Kind::NetworkPolicy]);
        list(&mut s, Kind::Namespace, vec![]);
        list(&mut s, Kind::NetworkPolicy, vec![]);
        assert!(s.view().synced());
    }

    #[test]
    fn relist_replaces_the_kind_atomically() {
        let mut s = Store::new();
        list(
            &mut s,
            Kind::Pod,
            vec![pod("n", "a", "x"), pod("n", "b", "x")],
        );
        s.handle(
            Kind::Namespace,
            Change::Applied(Entry {
                id: ObjectId {
                    kind: Kind::Namespace,
                    namespace: None,
                    name: "n".into(),
                },
                object: Ok(Object::Namespace(Namespace::new("n", []))),
            }),
        );
        let g1 = s.view().generation;
        s.handle(Kind::Pod, Change::ListStart);
        s.handle(Kind::Pod, Change::Listed(pod("n", "b", "y")));
        // Mid-list, the view still shows the previous state.
        assert_eq!(app(&s.view(), "n", "a").as_deref(), Some("x"));
        s.handle(Kind::Pod, Change::Listed(pod("n", "c", "z")));
        s.handle(Kind::Pod, Change::ListDone);
        let v = s.view();
        assert_eq!(app(&v, "n", "a"), None, "gone while unwatched");
        assert_eq!(app(&v, "n", "b").as_deref(), Some("y"));
        assert_eq!(app(&v, "n", "c").as_deref(), Some("z"));
        assert!(v.cluster.namespace("n").is_some(), "other kinds untouched");
        assert!(v.generation > g1);
        assert_eq!(v.lists, 2);
    }

    #[test]
    fn refused_object_keeps_last_valid_version() {
        let mut s = Store::new();
        list(
            &mut s,
            Kind::Pod,
            vec![pod("n", "a", "x"), refused("n", "bad")],
        );
        let v = s.view();
        assert_eq!(app(&v, "n", "a").as_deref(), Some("x"));
        assert_eq!(app(&v, "n", "bad"), None);
        assert_eq!(
            v.rejected.get("Pod n/bad").map(String::as_str),
            Some("metadata.labels: bad")
        );
        let g = v.generation;
        assert!(s.handle(Kind::Pod, Change::Applied(refused("n", "a"))));
        let v = s.view();
        assert_eq!(app(&v, "n", "a").as_deref(), Some("x"), "last valid stays");
        assert_eq!(v.generation, g, "the cluster did not change");
        assert!(!s.handle(Kind::Pod, Change::Applied(refused("n", "a"))));
        s.handle(Kind::Pod, Change::Applied(pod("n", "a", "y")));
        let v = s.view();
        assert_eq!(app(&v, "n", "a").as_deref(), Some("y"));
        assert!(!v.rejected.contains_key("Pod n/a"));
        s.handle(Kind::Pod, Change::Deleted(pod_id("n", "bad")));
        assert!(s.view().rejected.is_empty());
    }

    #[test]
    fn same_object_again_is_no_change() {
        let mut s = Store::new();
        s.handle(Kind::Pod, Change::Applied(pod("n", "a", "x")));
        let g = s.view().generation;
        assert!(!s.handle(Kind::Pod, Change::Applied(pod("n", "a", "x"))));
        assert_eq!(s.view().generation, g);
    }

    #[test]
    fn errors_are_cleared_by_the_next_change() {
        let mut s = Store::new();
        assert!(s.handle(Kind::Pod, Change::Error("connection refused".into())));
        assert!(!s.handle(Kind::Pod, Change::Error("connection refused".into())));
        assert_eq!(s.view().errors.len(), 1);
        assert!(s.handle(Kind::Pod, Change::ListStart));
        assert!(s.view().errors.is_empty());
    }
}
