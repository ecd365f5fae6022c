//! The Kubernetes policy source against a fake API server on loopback
//! (`kube_support`): the initial list, watch events, bookmarks,
//! disconnects (resume from the last resourceVersion) and 410 Gone
//! (relist, replacing what changed while the agent was away), objects the
//! model refuses, an API server that is not there yet. No root needed.
//!
//! Every test is bounded by [`TEST`]; each convergence by [`STEP`].

mod kube_support;

use std::{future::Future, time::Duration};

use cni_agent::policy::{
    kube::{wait_first_lists, ClusterConfig, KubeArgs, KubeError, KubeSource, KubeView},
    source::Source,
    Cluster, Manifests, ObjectKey,
};
use kube_support::{kubeconfig_for, FakeApi, Gone, Res};
use serde_json::{json, Value};

/// Bound of a whole test.
const TEST: Duration = Duration::from_secs(10);
/// Bound of one convergence (a 410 costs one backoff step, 0.8–1.6 s).
const STEP: Duration = Duration::from_secs(6);

fn bounded(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(TEST, test)
                .await
                .unwrap_or_else(|_| panic!("test not done in {TEST:?}"))
        })
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels, "uid": format!("uid-{name}")},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A pod as the API server has it: with the fields policy does not read.
fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": ns, "labels": labels,
            "uid": format!("uid-{ns}-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                  "name": "rs", "uid": "u", "controller": true}],
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{
                "name": "main", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
            }],
            "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": spec,
    })
}

fn allow_from_shop(port: Value) -> Value {
    json!({
        "podSelector": {"matchLabels": {"app": "pg"}},
        "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                      "podSelector": {"matchLabels": {"app": "web"}}}],
            "ports": [{"protocol": "TCP", "port": port}],
        }],
        "policyTypes": ["Ingress"],
    })
}

/// Two namespaces, two pods, one policy.
fn seed(api: &FakeApi) {
    api.apply(Res::Namespaces, namespace("shop", json!({"team": "a"})));
    api.apply(Res::Namespaces, namespace("db", json!({})));
    api.apply(
        Res::Pods,
        pod("shop", "web-1", json!({"app": "web"}), "10.0.0.5"),
    );
    api.apply(
        Res::Pods,
        pod("db", "pg-0", json!({"app": "pg"}), "10.0.1.7"),
    );
    api.apply(
        Res::NetworkPolicies,
        policy("db", "allow-web", allow_from_shop(json!(5432))),
    );
}

/// What the same objects give through `--manifests`: the kube source must
/// build exactly this.
fn expected(api: &FakeApi) -> Cluster {
    let mut m = Manifests::new();
    for res in Res::ALL {
        for o in api.objects(res) {
            m.add_json(&format!("{res:?}"), &o.to_string()).unwrap();
        }
    }
    m.into_cluster().unwrap()
}

async fn connect(api: &FakeApi, dir: &tempfile::TempDir) -> KubeSource {
    let config = ClusterConfig::Kubeconfig(vec![api.kubeconfig(dir.path())]);
    KubeSource::start(&config, "node-1").await.unwrap()
}

/// Waits until the source is synced and `done` holds.
async fn converge(src: &KubeSource, what: &str, done: impl Fn(&KubeView) -> bool) -> KubeView {
    let mut rx = src.subscribe();
    let waited = tokio::time::timeout(STEP, rx.wait_for(|v| v.synced() && done(v))).await;
    match waited {
        Ok(Ok(v)) => v.clone(),
        _ => panic!("{what}: not converged in {STEP:?}: {:#?}", src.view()),
    }
}

/// Until the source's cluster is what the API server holds.
async fn converge_to_api(src: &KubeSource, api: &FakeApi, what: &str) -> KubeView {
    let want = expected(api);
    converge(src, what, |v| *v.cluster == want).await
}

fn labels(c: &Cluster, ns: &str, name: &str) -> Option<Vec<(String, String)>> {
    c.pod(&ObjectKey::new(ns, name))
        .map(|p| p.labels().clone().into_iter().collect())
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn initial_list_builds_the_cluster() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let src = connect(&api, &dir).await;
        assert!(src.wait_synced(STEP).await, "{:#?}", src.view());
        let v = converge_to_api(&src, &api, "initial list").await;
        let c = &v.cluster;
        assert_eq!(
            c.namespace_labels("shop").get("team").map(String::as_str),
            Some("a")
        );
        assert_eq!(
            c.namespace_labels("db")
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("db")
        );
        let web = c.pod(&ObjectKey::new("shop", "web-1")).unwrap();
        assert_eq!(
            web.status_ips(),
            vec!["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            web.named_port("http", cni_agent::policy::Protocol::Tcp)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![8080]
        );
        assert!(c.policy(&ObjectKey::new("db", "allow-web")).is_some());
        assert!(v.rejected.is_empty() && v.errors.is_empty());
        assert_eq!(src.cluster().unwrap(), **c);
        assert_eq!(src.node_name(), "node-1");
        assert!(src.describe().contains(&api.addr().to_string()));
        // One list per kind, then a watch from the list's resourceVersion.
        let rv = api.resource_version().to_string();
        for res in Res::ALL {
            assert_eq!(api.lists(res), 1, "{res:?}");
        }
        api.wait_watching().await;
        for res in Res::ALL {
            assert_eq!(api.watches(res), vec![Some(rv.clone())], "{res:?}");
        }
    });
}

#[test]
fn watch_events_converge() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let src = connect(&api, &dir).await;
        let g0 = converge_to_api(&src, &api, "initial list").await.generation;
        api.wait_watching().await;

        // ADDED: a policy.
        api.apply(
            Res::NetworkPolicies,
            policy("shop", "deny-all", json!({"podSelector": {}})),
        );
        let v = converge(&src, "policy added", |v| {
            v.cluster
                .policy(&ObjectKey::new("shop", "deny-all"))
                .is_some()
        })
        .await;
        assert!(v.generation > g0);

        // MODIFIED: a pod's labels.
        api.apply(
            Res::Pods,
            pod(
                "shop",
                "web-1",
                json!({"app": "web", "tier": "front"}),
                "10.0.0.5",
            ),
        );
        converge(&src, "pod labels modified", |v| {
            labels(&v.cluster, "shop", "web-1") == Some(kv(&[("app", "web"), ("tier", "front")]))
        })
        .await;

        // MODIFIED: a change policy does not read is no change.
        let g = src.generation().unwrap();
        let mut churn = pod(
            "shop",
            "web-1",
            json!({"app": "web", "tier": "front"}),
            "10.0.0.5",
        );
        churn["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        api.apply(Res::Pods, churn);

        // DELETED: a pod, then its namespace (contents first, as the
        // namespace controller does).
        api.delete(Res::Pods, Some("db"), "pg-0");
        let v = converge(&src, "pod deleted", |v| {
            v.cluster.pod(&ObjectKey::new("db", "pg-0")).is_none()
        })
        .await;
        assert_eq!(v.generation, g + 1, "the status-only change did not count");
        api.delete(Res::NetworkPolicies, Some("db"), "allow-web");
        api.delete(Res::Namespaces, None, "db");
        converge_to_api(&src, &api, "namespace deleted").await;

        // All through the first watches: no relist, no reconnect.
        for res in Res::ALL {
            assert_eq!(api.lists(res), 1, "{res:?}");
            assert_eq!(api.watches(res).len(), 1, "{res:?}");
        }
    });
}

#[test]
fn disconnect_resumes_from_the_last_resource_version() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let src = connect(&api, &dir).await;
        converge_to_api(&src, &api, "initial list").await;
        api.wait_watching().await;
        let list_rv = api.resource_version();
        let pod_rv = api.apply(
            Res::Pods,
            pod("shop", "web-1", json!({"app": "web2"}), "10.0.0.5"),
        );
        converge_to_api(&src, &api, "pod modified").await;

        // Away: the streams end, new watches wait; the cluster changes.
        api.pause_watches();
        api.disconnect();
        api.apply(
            Res::Pods,
            pod("shop", "web-2", json!({"app": "web"}), "10.0.0.6"),
        );
        api.apply(
            Res::NetworkPolicies,
            policy("db", "allow-web", allow_from_shop(json!(5433))),
        );
        api.resume_watches();
        converge_to_api(&src, &api, "changes made while disconnected").await;

        // Resumed where each kind was, with no list.
        for res in Res::ALL {
            assert_eq!(api.lists(res), 1, "{res:?} relisted");
        }
        assert_eq!(
            api.watches(Res::Pods),
            vec![Some(list_rv.to_string()), Some(pod_rv.to_string())]
        );
        assert_eq!(
            api.watches(Res::Namespaces),
            vec![Some(list_rv.to_string()); 2]
        );
    });
}

#[test]
fn bookmark_moves_the_resume_point() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let src = connect(&api, &dir).await;
        converge_to_api(&src, &api, "initial list").await;
        api.wait_watching().await;
        // Writes elsewhere move the resourceVersion on; the pods' watch
        // only learns of it by a bookmark.
        api.apply(Res::Namespaces, namespace("shop", json!({"team": "b"})));
        api.bump();
        let bookmark = api.bookmark(Res::Pods);
        api.disconnect();
        api.apply(
            Res::Pods,
            pod("db", "pg-1", json!({"app": "pg"}), "10.0.1.8"),
        );
        converge_to_api(&src, &api, "after the bookmark").await;
        let pods = api.watches(Res::Pods);
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(pods[1], Some(bookmark.to_string()));
        assert_eq!(api.lists(Res::Pods), 1);
    });
}

/// Away while the cluster changes and the history is compacted: the
/// resumed watches get 410 Gone (`gone`), the kinds are listed again, and
/// the view is right, deletions included.
async fn relist_after_gone(gone: Gone) {
    let api = FakeApi::start().await;
    api.set_gone(gone);
    seed(&api);
    api.apply(
        Res::Pods,
        pod("db", "pg-1", json!({"app": "pg"}), "10.0.1.8"),
    );
    let dir = tempfile::tempdir().unwrap();
    let src = connect(&api, &dir).await;
    converge_to_api(&src, &api, "initial list").await;
    api.wait_watching().await;

    api.pause_watches();
    api.disconnect();
    api.apply(
        Res::Pods,
        pod("shop", "web-1", json!({"app": "web", "v": "2"}), "10.0.0.5"),
    );
    api.delete(Res::Pods, Some("db"), "pg-1");
    api.apply(
        Res::Pods,
        pod("shop", "web-2", json!({"app": "web"}), "10.0.0.6"),
    );
    api.delete(Res::NetworkPolicies, Some("db"), "allow-web");
    api.apply(
        Res::NetworkPolicies,
        policy("db", "deny-all", json!({"podSelector": {}})),
    );
    api.apply(Res::Namespaces, namespace("db", json!({"env": "prod"})));
    api.compact();
    api.resume_watches();

    let v = converge_to_api(&src, &api, "relist after 410").await;
    let c = &v.cluster;
    assert_eq!(
        labels(c, "shop", "web-1"),
        Some(kv(&[("app", "web"), ("v", "2")]))
    );
    assert!(c.pod(&ObjectKey::new("db", "pg-1")).is_none());
    assert!(c.policy(&ObjectKey::new("db", "allow-web")).is_none());
    for res in Res::ALL {
        assert_eq!(api.lists(res), 2, "{res:?} listed again");
    }
    assert_eq!(v.lists, 6);

    // Then watching again from the new list.
    api.wait_watching().await;
    api.apply(
        Res::Pods,
        pod("db", "pg-2", json!({"app": "pg"}), "10.0.1.9"),
    );
    converge_to_api(&src, &api, "event after the relist").await;
    assert_eq!(api.lists(Res::Pods), 2);
}

#[test]
fn gone_event_relists() {
    bounded(relist_after_gone(Gone::Event));
}

#[test]
fn http_gone_relists() {
    bounded(relist_after_gone(Gone::Http));
}

#[test]
fn refused_objects_are_skipped_and_the_rest_applies() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        // The API server would refuse this; a version skew could let one in.
        api.apply(
            Res::NetworkPolicies,
            policy("db", "bad", allow_from_shop(json!("Not_A_Port_Name"))),
        );
        let dir = tempfile::tempdir().unwrap();
        let src = connect(&api, &dir).await;
        let v = converge(&src, "initial list", |v| {
            v.cluster
                .policy(&ObjectKey::new("db", "allow-web"))
                .is_some()
        })
        .await;
        assert!(v.cluster.policy(&ObjectKey::new("db", "bad")).is_none());
        assert_eq!(v.cluster.policies().count(), 1);
        assert_eq!(v.cluster.pods().count(), 2);
        let why = &v.rejected["NetworkPolicy db/bad"];
        assert!(why.starts_with("spec.ingress[0].ports[0].port: "), "{why}");
        api.wait_watching().await;

        // A valid policy turning invalid: its last valid version stays.
        let before = v
            .cluster
            .policy(&ObjectKey::new("db", "allow-web"))
            .cloned();
        api.apply(
            Res::NetworkPolicies,
            policy("db", "allow-web", allow_from_shop(json!(70000))),
        );
        let v = converge(&src, "refused modification", |v| {
            v.rejected.contains_key("NetworkPolicy db/allow-web")
        })
        .await;
        assert_eq!(
            v.cluster
                .policy(&ObjectKey::new("db", "allow-web"))
                .cloned(),
            before
        );

        // Both fixed: both in force, nothing refused.
        api.apply(
            Res::NetworkPolicies,
            policy("db", "bad", allow_from_shop(json!("http"))),
        );
        api.apply(
            Res::NetworkPolicies,
            policy("db", "allow-web", allow_from_shop(json!(5433))),
        );
        let v = converge_to_api(&src, &api, "fixed").await;
        assert!(v.rejected.is_empty(), "{:?}", v.rejected);
    });
}

#[test]
fn unreachable_api_server_is_retried() {
    bounded(async {
        // A loopback port with nothing on it (yet).
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = ClusterConfig::Kubeconfig(vec![kubeconfig_for(addr, dir.path())]);
        let src = KubeSource::start(&config, "node-1").await.unwrap();
        let mut rx = src.subscribe();
        tokio::time::timeout(STEP, rx.wait_for(|v| !v.errors.is_empty()))
            .await
            .expect("errors reported")
            .unwrap();
        let err = src.cluster().unwrap_err().to_string();
        assert!(err.contains("waiting for the first list"), "{err}");
        assert_eq!(src.generation(), None);
        let unsynced = Source::Kube(src.clone());
        assert!(unsynced.load().is_err());
        assert!(unsynced.fingerprint().is_empty());

        let api = FakeApi::start_on(addr).await;
        seed(&api);
        let v = converge_to_api(&src, &api, "API server up").await;
        assert!(v.errors.is_empty(), "{:?}", v.errors);
    });
}

/// The agent's side: flags → options → `Source::Kube`, whose fingerprint
/// moves with the watches and whose load is the watched cluster.
#[test]
fn agent_source_follows_the_watches() {
    bounded(async {
        let api = FakeApi::start().await;
        seed(&api);
        let dir = tempfile::tempdir().unwrap();
        let args = KubeArgs {
            kubeconfig: Some(api.kubeconfig(dir.path())),
            node_name: Some("node-7".into()),
        };
        assert!(matches!(args.options(true), Err(KubeError::TwoSources)));
        let options = args.options(false).unwrap().expect("a Kubernetes source");
        assert_eq!(options.node_name, "node-7");
        let source = options.start_source().await.unwrap();
        assert!(source.is_some());
        wait_first_lists(&source, STEP).await;
        assert!(
            source.describe().contains("node-7"),
            "{}",
            source.describe()
        );
        assert_eq!(source.load().unwrap(), expected(&api));

        let before = source.fingerprint();
        assert!(!before.is_empty());
        api.wait_watching().await;
        api.apply(
            Res::Pods,
            pod("db", "pg-1", json!({"app": "pg"}), "10.0.1.8"),
        );
        while source.fingerprint() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(source.load().unwrap(), expected(&api));
        // Clones are the same source (the engine compares configurations).
        assert_eq!(source.clone(), source);
    });
}
