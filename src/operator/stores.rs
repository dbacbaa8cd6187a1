//! The operator's caches when it watches a list of namespaces: one
//! reflector store per namespace (a watch is either cluster-wide or
//! namespaced), read as one.

use std::sync::Arc;

use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Api, Client, Resource};

/// One store per watched namespace, or a single cluster-wide one.
pub struct Stores<K: Resource<DynamicType = ()> + Clone + 'static> {
    by_namespace: Vec<(Option<String>, Store<K>)>,
}

/// What feeds one namespace's store: its writer and the Api to watch.
pub type Feed<K> = (Writer<K>, Api<K>);

impl<K> Stores<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + 'static,
{
    /// A store per namespace (`None`: one cluster-wide), and what feeds each.
    pub fn reflect(client: &Client, namespaces: &[Option<String>]) -> (Self, Vec<Feed<K>>) {
        let mut stores = Vec::new();
        let mut feeds = Vec::new();
        for ns in namespaces {
            let (store, writer) = reflector::store::<K>();
            let api = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            stores.push((ns.clone(), store));
            feeds.push((writer, api));
        }
        (Stores::new(stores), feeds)
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    pub fn new(by_namespace: Vec<(Option<String>, Store<K>)>) -> Self {
        Stores { by_namespace }
    }

    fn store_for(&self, ns: Option<&str>) -> Option<&Store<K>> {
        self.by_namespace.iter().find(|(n, _)| n.is_none() || n.as_deref() == ns).map(|(_, s)| s)
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.store_for(key.namespace.as_deref())?.get(key)
    }

    /// Every object of every watched namespace.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.by_namespace.iter().flat_map(|(_, s)| s.state()).collect()
    }

    /// The objects of one namespace that `keep` accepts. Only those are
    /// cloned out of the store: every pair's round asks this of stores that
    /// hold every pair's objects, so copying the whole store each time cost
    /// time in proportion to the number of pairs, per pair.
    pub fn in_namespace_where(&self, ns: &str, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.store_for(Some(ns))
            .map(|s| s.state_filter(|o| o.meta().namespace.as_deref() == Some(ns) && keep(o)))
            .unwrap_or_default()
    }

    /// Whether one namespace holds an object `keep` accepts.
    pub fn any_in_namespace(&self, ns: &str, keep: impl Fn(&K) -> bool) -> bool {
        self.store_for(Some(ns))
            .is_some_and(|s| s.find(|o| o.meta().namespace.as_deref() == Some(ns) && keep(o)).is_some())
    }

    /// Resolves once every namespace's first list is in.
    pub async fn wait_until_ready(&self) {
        for (_, s) in &self.by_namespace {
            let _ = s.wait_until_ready().await;
        }
    }
}

/// `a, b,,c` → the distinct namespaces named, in order; none means all.
pub fn parse_namespaces(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{reflector, watcher};

    fn pod(ns: &str, name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn a_namespace_list_is_split_trimmed_and_deduplicated() {
        assert_eq!(parse_namespaces(" a, b,,a ,c"), ["a", "b", "c"]);
        assert!(parse_namespaces(" , ").is_empty());
    }

    #[test]
    fn objects_are_found_in_their_own_namespace_store_only() {
        let (a, mut wa) = reflector::store::<Pod>();
        let (b, mut wb) = reflector::store::<Pod>();
        wa.apply_watcher_event(&watcher::Event::Apply(pod("a", "x")));
        wb.apply_watcher_event(&watcher::Event::Apply(pod("b", "y")));
        let s = Stores::new(vec![(Some("a".into()), a), (Some("b".into()), b)]);
        assert!(s.get(&ObjectRef::new("x").within("a")).is_some());
        assert!(s.get(&ObjectRef::new("y").within("b")).is_some());
        assert!(s.get(&ObjectRef::new("x").within("b")).is_none());
        assert!(s.get(&ObjectRef::new("z").within("c")).is_none(), "an unwatched namespace");
        assert_eq!(s.state().len(), 2);
        assert_eq!(s.in_namespace_where("b", |_| true).len(), 1);
        assert!(s.any_in_namespace("a", |p| p.metadata.name.as_deref() == Some("x")));
        assert!(!s.any_in_namespace("a", |p| p.metadata.name.as_deref() == Some("y")));
    }

    #[test]
    fn a_cluster_wide_store_is_read_one_namespace_at_a_time() {
        let (all, mut w) = reflector::store::<Pod>();
        for (ns, name) in [("a", "x"), ("a", "y"), ("b", "x")] {
            w.apply_watcher_event(&watcher::Event::Apply(pod(ns, name)));
        }
        let s = Stores::new(vec![(None, all)]);
        assert_eq!(s.in_namespace_where("a", |_| true).len(), 2);
        assert_eq!(s.in_namespace_where("a", |p| p.metadata.name.as_deref() == Some("x")).len(), 1);
        assert!(s.in_namespace_where("c", |_| true).is_empty());
        assert!(s.any_in_namespace("b", |p| p.metadata.name.as_deref() == Some("x")));
        assert!(!s.any_in_namespace("b", |p| p.metadata.name.as_deref() == Some("y")), "y lives in a only");
    }
}
