//! Compiler and manifest tests against the NetworkPolicy specification.

use std::{net::IpAddr, time::Instant};

use cni_ebpf_common::policy::{
    IDENTITY_ANY, IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST, IDENTITY_WORLD, POLICY_F_ALLOW_HOST,
    POLICY_F_EGRESS_ISOLATED, POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED, PORT_ANY, PROTO_ANY,
};

use super::*;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cluster(yaml: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_yaml("test.yaml", yaml).unwrap();
    m.into_cluster().unwrap()
}

fn manifest_error(yaml: &str) -> String {
    let mut m = Manifests::new();
    let r = m
        .add_yaml("bad.yaml", yaml)
        .and_then(|()| m.into_cluster().map(drop));
    r.expect_err("the manifest should be refused").to_string()
}

/// Every pod of the cluster with an address, as a local endpoint (ids from 1).
fn local(c: &Cluster) -> Vec<LocalEndpoint> {
    c.pods()
        .filter(|p| !p.status_ips().is_empty())
        .enumerate()
        .map(|(i, p)| LocalEndpoint {
            endpoint_id: i as u64 + 1,
            pod: Some(p.key()),
            ips: p.status_ips(),
        })
        .collect()
}

fn compile_all(c: &Cluster) -> Compiled {
    compile(
        c,
        &local(c),
        &CompileOptions::default(),
        &IdentityTable::new(),
        7,
    )
    .unwrap()
}

fn ep<'a>(compiled: &'a Compiled, ns: &str, name: &str) -> &'a EndpointPolicy {
    let key = ObjectKey::new(ns, name);
    compiled
        .endpoints
        .values()
        .find(|e| e.pod.as_ref() == Some(&key))
        .unwrap_or_else(|| panic!("no endpoint for {key}"))
}

fn allowed(compiled: &Compiled, from: &str, to: &str, proto: u8, port: u16) -> bool {
    explain(
        compiled,
        Party::Address(ip(from)),
        Party::Address(ip(to)),
        proto,
        port,
    )
    .unwrap()
    .allowed
}

/// Namespaces `a` and `b` (labels `team: <name>`), pods `a/web` (10.0.1.1),
/// `a/db` (10.0.1.2), `b/web` (10.0.2.1), `b/client` (10.0.2.2).
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: b, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 9090}]
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
status: {podIP: 10.0.2.2}
"#;

fn with(policies: &str) -> Cluster {
    cluster(&format!("{BASE}\n---\n{policies}"))
}

const WEB_A: &str = "10.0.1.1";
const DB_A: &str = "10.0.1.2";
const WEB_B: &str = "10.0.2.1";
const CLIENT_B: &str = "10.0.2.2";

// ---------------------------------------------------------------- isolation

#[test]
fn unselected_pods_are_not_isolated() {
    let c = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}",
    );
    let out = compile_all(&c);
    let db = ep(&out, "a", "db");
    assert_eq!(db.flags, POLICY_F_PROGRAMMED | POLICY_F_ALLOW_HOST);
    assert!(db.entries.is_empty() && db.port_ranges.is_empty());
    assert!(allowed(&out, CLIENT_B, DB_A, TCP, 80));
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert_eq!(out.revision, 7);
    assert_eq!(ep(&out, "a", "web").state(out.revision).revision, 7);
}

#[test]
fn empty_pod_selector_selects_the_policy_namespace_only() {
    let c = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}",
    );
    let out = compile_all(&c);
    for name in ["web", "db"] {
        assert_ne!(ep(&out, "a", name).flags & POLICY_F_INGRESS_ISOLATED, 0);
    }
    for name in ["web", "client"] {
        assert_eq!(ep(&out, "b", name).flags & POLICY_F_INGRESS_ISOLATED, 0);
    }
}

#[test]
fn deny_all_ingress_list_vs_allow_all_empty_rule() {
    let deny = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, ingress: []}",
    ));
    let web = ep(&deny, "a", "web");
    assert_eq!(
        web.flags & (POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED),
        POLICY_F_INGRESS_ISOLATED
    );
    assert!(web.entries.is_empty());
    assert!(!allowed(&deny, DB_A, WEB_A, TCP, 80));

    let allow = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, ingress: [{}]}",
    ));
    let web = ep(&allow, "a", "web");
    assert_ne!(web.flags & POLICY_F_INGRESS_ISOLATED, 0);
    let keys: Vec<&EntryKey> = web.entries.keys().collect();
    assert_eq!(
        keys,
        [&EntryKey {
            direction: Direction::Ingress,
            identity: IDENTITY_ANY,
            protocol: PROTO_ANY,
            port: PORT_ANY
        }]
    );
    assert!(allowed(&allow, CLIENT_B, WEB_A, UDP, 53));
    assert!(
        allowed(&allow, "192.0.2.9", WEB_A, 1, 0),
        "PROTO_ANY covers ICMP too"
    );
}

#[test]
fn policy_types_explicit_and_defaulted() {
    // Explicit Egress only: ingress stays open.
    let out = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {}}]}]}",
    ));
    let web = ep(&out, "a", "web");
    assert_eq!(
        web.flags & (POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED),
        POLICY_F_EGRESS_ISOLATED
    );
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert!(allowed(&out, WEB_A, DB_A, TCP, 80));
    assert!(!allowed(&out, WEB_A, CLIENT_B, TCP, 80));

    // Defaulted: egress rules present → Ingress and Egress.
    let out = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: web}}, egress: [{to: [{podSelector: {}}]}]}",
    ));
    let web = ep(&out, "a", "web");
    assert_eq!(
        web.flags & (POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED),
        POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED
    );
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 80));

    // Defaulted with `egress: []`: Ingress only.
    let out = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: web}}, egress: []}",
    ));
    assert_eq!(ep(&out, "a", "web").flags & POLICY_F_EGRESS_ISOLATED, 0);

    // Ingress-only types: the egress rules are ignored.
    let out = compile_all(&with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress], ingress: [{}], egress: [{to: [{podSelector: {}}]}]}",
    ));
    let web = ep(&out, "a", "web");
    assert_eq!(web.flags & POLICY_F_EGRESS_ISOLATED, 0);
    assert!(web
        .entries
        .keys()
        .all(|k| k.direction == Direction::Ingress));
}

// ---------------------------------------------------------------- peers

fn ingress_to_web_a(from: &str) -> Cluster {
    with(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: a}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from:\n{from}"
    ))
}

#[test]
fn namespace_selector_empty_means_all_namespaces_absent_means_own() {
    let out = compile_all(&ingress_to_web_a("    - podSelector: {}\n"));
    assert!(allowed(&out, DB_A, WEB_A, TCP, 80));
    assert!(
        !allowed(&out, CLIENT_B, WEB_A, TCP, 80),
        "absent namespaceSelector: own namespace"
    );

    let out = compile_all(&ingress_to_web_a("    - namespaceSelector: {}\n"));
    assert!(allowed(&out, DB_A, WEB_A, TCP, 80));
    assert!(
        allowed(&out, CLIENT_B, WEB_A, TCP, 80),
        "{{}}: every namespace"
    );
    assert!(
        !allowed(&out, "192.0.2.1", WEB_A, TCP, 80),
        "but no non-pod address"
    );
}

#[test]
fn selectors_in_one_peer_are_anded_in_two_peers_ored() {
    let and = compile_all(&ingress_to_web_a(
        "    - namespaceSelector: {matchLabels: {team: b}}\n      podSelector: {matchLabels: {app: web}}\n",
    ));
    assert!(allowed(&and, WEB_B, WEB_A, TCP, 80));
    assert!(!allowed(&and, CLIENT_B, WEB_A, TCP, 80));
    assert!(!allowed(&and, DB_A, WEB_A, TCP, 80));

    let or = compile_all(&ingress_to_web_a(
        "    - namespaceSelector: {matchLabels: {team: b}}\n    - podSelector: {matchLabels: {app: db}}\n",
    ));
    assert!(allowed(&or, WEB_B, WEB_A, TCP, 80));
    assert!(allowed(&or, CLIENT_B, WEB_A, TCP, 80));
    assert!(allowed(&or, DB_A, WEB_A, TCP, 80));
}

#[test]
fn match_expressions_operators() {
    let out = compile_all(&ingress_to_web_a(
        "    - namespaceSelector: {}\n      podSelector:\n        matchExpressions:\n        - {key: app, operator: NotIn, values: [web, db]}\n",
    ));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert!(!allowed(&out, WEB_B, WEB_A, TCP, 80));
    assert!(!allowed(&out, DB_A, WEB_A, TCP, 80));

    let out = compile_all(&ingress_to_web_a(
        "    - namespaceSelector:\n        matchExpressions:\n        - {key: team, operator: In, values: [b]}\n        - {key: other, operator: DoesNotExist}\n      podSelector:\n        matchExpressions:\n        - {key: app, operator: Exists}\n",
    ));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert!(allowed(&out, WEB_B, WEB_A, TCP, 80));
    assert!(!allowed(&out, DB_A, WEB_A, TCP, 80));
}

#[test]
fn namespaces_carry_the_metadata_name_label() {
    let c = with("apiVersion: v1\nkind: Namespace\nmetadata: {name: c, labels: {kubernetes.io/metadata.name: lie}}");
    assert_eq!(
        c.namespace("c").unwrap().metadata.labels[METADATA_NAME_LABEL],
        "c",
        "the API server overwrites it"
    );
    assert_eq!(c.namespace_labels("b")[METADATA_NAME_LABEL], "b");
    assert_eq!(
        c.namespace_labels("unknown")[METADATA_NAME_LABEL],
        "unknown"
    );
    let out = compile_all(&ingress_to_web_a(
        "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}\n",
    ));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert!(!allowed(&out, DB_A, WEB_A, TCP, 80));
}

// ---------------------------------------------------------------- ipBlock

#[test]
fn ipblock_with_an_except_covering_a_pod() {
    // 10.0.0.0/8 except 10.0.2.0/24: namespace b's pods are in the hole.
    let out = compile_all(&ingress_to_web_a(
        "    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}\n",
    ));
    assert!(
        allowed(&out, DB_A, WEB_A, TCP, 80),
        "a pod address inside the block"
    );
    assert!(
        !allowed(&out, CLIENT_B, WEB_A, TCP, 80),
        "a pod address in the except"
    );
    assert!(
        allowed(&out, "10.9.9.9", WEB_A, TCP, 80),
        "a non-pod address in the block"
    );
    assert!(
        !allowed(&out, "10.0.2.77", WEB_A, TCP, 80),
        "a non-pod address in the except"
    );
    assert!(!allowed(&out, "192.0.2.1", WEB_A, TCP, 80), "the world");

    // The ipcache: each prefix with its own identity, pods as /32.
    let id8 = out.ipcache[&"10.0.0.0/8".parse().unwrap()];
    let id24 = out.ipcache[&"10.0.2.0/24".parse().unwrap()];
    assert!(id8 >= IDENTITY_FIRST_ALLOCATED && id24 >= IDENTITY_FIRST_ALLOCATED && id8 != id24);
    assert_eq!(out.ipcache[&"0.0.0.0/0".parse().unwrap()], IDENTITY_WORLD);
    assert_eq!(out.ipcache[&"::/0".parse().unwrap()], IDENTITY_WORLD);
    assert_eq!(out.identity_of(ip("10.0.2.77")), id24);
    assert_eq!(out.identity_of(ip("10.200.0.1")), id8);
    assert_eq!(out.identity_of(ip("192.0.2.1")), IDENTITY_WORLD);
    let client = out.identity_of(ip(CLIENT_B));
    assert!(![id8, id24, IDENTITY_WORLD].contains(&client));
    // Entries: the /8 fragment and the pods inside it, nothing in the hole.
    let web = ep(&out, "a", "web");
    let ids: Vec<u32> = web.entries.keys().map(|k| k.identity).collect();
    assert!(ids.contains(&id8) && !ids.contains(&id24) && !ids.contains(&client));
}

#[test]
fn pods_with_the_same_labels_split_by_ipblock_position() {
    // Same namespace and labels, one pod in an except: two identities.
    let c = cluster(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: one, labels: {app: x}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: two, labels: {app: x}}
status: {podIP: 10.1.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: three, labels: {app: x}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
status: {podIP: 10.1.0.100}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.1.0.0/16, except: [10.1.1.0/24]}
"#,
    );
    let out = compile_all(&c);
    assert_eq!(
        out.identity_of(ip("10.1.0.1")),
        out.identity_of(ip("10.1.0.2"))
    );
    assert_ne!(
        out.identity_of(ip("10.1.0.1")),
        out.identity_of(ip("10.1.1.1"))
    );
    assert!(allowed(&out, "10.1.0.1", "10.1.0.100", TCP, 1));
    assert!(!allowed(&out, "10.1.1.1", "10.1.0.100", TCP, 1));
}

#[test]
fn ipblock_default_route_does_not_cover_the_other_family() {
    let c = cluster(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {app: x}}
status: {podIPs: [{ip: 10.1.0.1}, {ip: "fd00::1"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.0.0/16]}
"#,
    );
    let out = compile_all(&c);
    assert!(allowed(&out, "10.1.0.1", "192.0.2.1", TCP, 443));
    assert!(!allowed(&out, "10.1.0.1", "169.254.169.254", TCP, 80));
    assert!(
        !allowed(&out, "fd00::1", "2001:db8::1", TCP, 443),
        "0.0.0.0/0 is not the IPv6 world"
    );
    let v4_world = out.ipcache[&"0.0.0.0/0".parse().unwrap()];
    assert!(
        v4_world >= IDENTITY_FIRST_ALLOCATED,
        "a default route in an ipBlock is a CIDR class"
    );
    assert_eq!(out.ipcache[&"::/0".parse().unwrap()], IDENTITY_WORLD);
    // Dual stack: the pod's v4 address sits under 0.0.0.0/0, its v6 one
    // nowhere: two identities of one pod.
    assert_ne!(
        out.identity_of(ip("10.1.0.1")),
        out.identity_of(ip("fd00::1"))
    );
}

#[test]
fn host_and_world() {
    let c = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}]}]}",
    );
    let opts = CompileOptions {
        node_ips: vec![ip("192.168.1.1")],
        ..CompileOptions::default()
    };
    let out = compile(&c, &local(&c), &opts, &IdentityTable::new(), 1).unwrap();
    assert_eq!(out.identity_of(ip("192.168.1.1")), IDENTITY_HOST);
    assert_eq!(out.identity_of(ip("8.8.8.8")), IDENTITY_WORLD);
    assert!(allowed(&out, "192.168.1.1", WEB_A, TCP, 80));
    assert!(allowed(&out, "192.168.7.7", WEB_A, TCP, 80));
    // The ipBlock contains the node: host is among the rule's peers.
    assert!(ep(&out, "a", "web")
        .entries
        .keys()
        .any(|k| k.identity == IDENTITY_HOST));

    // Without allow_host and without an ipBlock for it, the host is denied.
    let c = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}",
    );
    let strict = CompileOptions {
        allow_host: false,
        ..opts.clone()
    };
    let out = compile(&c, &local(&c), &strict, &IdentityTable::new(), 1).unwrap();
    assert_eq!(ep(&out, "a", "web").flags & POLICY_F_ALLOW_HOST, 0);
    assert!(!allowed(&out, "192.168.1.1", WEB_A, TCP, 80));
    let out = compile(&c, &local(&c), &opts, &IdentityTable::new(), 1).unwrap();
    let v = explain(
        &out,
        Party::Address(ip("192.168.1.1")),
        Party::Address(ip(WEB_A)),
        TCP,
        80,
    )
    .unwrap();
    assert!(v.allowed, "{v}");
    assert_eq!(v.ingress.unwrap().outcome, Outcome::HostAllowed);
}

// ---------------------------------------------------------------- ports

fn ports_policy(direction: &str, ports: &str) -> Cluster {
    let peers = if direction == "ingress" { "from" } else { "to" };
    with(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: b}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [{}]\n  {direction}:\n  - {peers}: [{{namespaceSelector: {{}}}}]\n    ports:\n{ports}",
        if direction == "ingress" { "Ingress" } else { "Egress" }
    ))
}

#[test]
fn named_ports_in_egress_resolve_per_destination_pod() {
    // a/web declares http=8080, b/web http=9090; same labels {app: web}.
    let out = compile_all(&ports_policy("egress", "    - port: http\n"));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 8080));
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 9090));
    assert!(allowed(&out, CLIENT_B, WEB_B, TCP, 9090));
    assert!(!allowed(&out, CLIENT_B, WEB_B, TCP, 8080));
    assert!(
        !allowed(&out, CLIENT_B, DB_A, TCP, 8080),
        "db declares no http port"
    );
    assert!(
        !allowed(&out, CLIENT_B, WEB_A, UDP, 8080),
        "name and protocol must both match"
    );
}

#[test]
fn named_ports_split_identities_only_when_they_differ() {
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: w1, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.5.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: w2, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.5.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: w3, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8000}]}]}
status: {podIP: 10.5.0.3}
"#;
    let no_egress_names = compile_all(&cluster(pods));
    let id = |o: &Compiled, a| o.identity_of(ip(a));
    assert_eq!(
        id(&no_egress_names, "10.5.0.1"),
        id(&no_egress_names, "10.5.0.3"),
        "no egress rule names a port"
    );
    let named = compile_all(&cluster(&format!(
        "{pods}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\n\
         spec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{{ports: [{{port: http}}]}}]}}"
    )));
    assert_eq!(id(&named, "10.5.0.1"), id(&named, "10.5.0.2"));
    assert_ne!(id(&named, "10.5.0.1"), id(&named, "10.5.0.3"));
    assert!(allowed(&named, "10.5.0.1", "10.5.0.3", TCP, 8000));
    assert!(!allowed(&named, "10.5.0.1", "10.5.0.3", TCP, 80));
    assert!(allowed(&named, "10.5.0.3", "10.5.0.2", TCP, 80));
}

#[test]
fn named_ports_in_ingress_resolve_on_the_local_pod() {
    let c = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}",
    );
    let out = compile_all(&c);
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 8080));
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 9090));
    let db = ep(&out, "a", "db");
    assert!(
        db.entries.is_empty(),
        "db has no port called http: the rule allows nothing there"
    );
    assert!(!allowed(&out, CLIENT_B, DB_A, TCP, 8080));
}

#[test]
fn end_port_ranges() {
    let out = compile_all(&ports_policy(
        "ingress",
        "    - {port: 8000, endPort: 8100}\n    - {port: 9000, endPort: 9000}\n    - {protocol: UDP, port: 5000, endPort: 5010}\n",
    ));
    let client = ep(&out, "b", "client");
    // One range entry per peer identity (namespaceSelector {}: every pod).
    let tcp: std::collections::BTreeSet<_> = client
        .port_ranges
        .iter()
        .filter(|(k, _)| k.protocol == TCP)
        .flat_map(|(_, r)| r.iter().map(|r| (r.first, r.last)))
        .collect();
    assert_eq!(tcp.into_iter().collect::<Vec<_>>(), [(8000, 8100)]);
    assert_eq!(client.port_ranges.len(), 2 * out.identities.len());
    assert!(
        client.entries.keys().any(|k| k.port == 9000),
        "a one-port range is an exact entry"
    );
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8050, true),
        (8100, true),
        (8101, false),
        (9000, true),
    ] {
        assert_eq!(allowed(&out, WEB_A, CLIENT_B, TCP, port), ok, "TCP {port}");
    }
    assert!(allowed(&out, WEB_A, CLIENT_B, UDP, 5005));
    assert!(!allowed(&out, WEB_A, CLIENT_B, TCP, 5005));
    let (key, ranges) = client
        .port_range_entries()
        .find(|(k, _)| k.protocol == UDP)
        .unwrap();
    assert_eq!(
        (key.port, key.direction, ranges.count, ranges.ranges[0]),
        (0, 1, 1, [5000, 5010])
    );
}

#[test]
fn more_ranges_than_fit_are_split_or_refused() {
    let many: String = (0..10)
        .map(|i| {
            format!(
                "    - {{port: {}, endPort: {}}}\n",
                1000 + i * 100,
                1000 + i * 100 + 4
            )
        })
        .collect();
    let out = compile_all(&ports_policy("ingress", &many));
    let client = ep(&out, "b", "client");
    assert!(!client.port_ranges.is_empty());
    for ranges in client.port_ranges.values() {
        assert_eq!(ranges.len(), cni_ebpf_common::policy::PORT_RANGES_PER_KEY);
    }
    for i in 0..10 {
        assert!(allowed(&out, WEB_A, CLIENT_B, TCP, 1000 + i * 100 + 2));
        assert!(!allowed(&out, WEB_A, CLIENT_B, TCP, 1000 + i * 100 + 5));
    }
    let wide: String = (0..10)
        .map(|i| {
            format!(
                "    - {{port: {}, endPort: {}}}\n",
                1000 + i * 5000,
                1000 + i * 5000 + 2000
            )
        })
        .collect();
    let c = ports_policy("ingress", &wide);
    let err = compile(
        &c,
        &local(&c),
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap_err();
    assert!(
        matches!(err, CompileError::TooManyPortRanges { ranges: 10, .. }),
        "{err}"
    );
}

#[test]
fn protocols_and_port_defaults() {
    let out = compile_all(&ports_policy(
        "ingress",
        "    - port: 80\n    - {protocol: SCTP, port: 7777}\n    - protocol: UDP\n",
    ));
    assert!(
        allowed(&out, WEB_A, CLIENT_B, TCP, 80),
        "TCP when no protocol"
    );
    assert!(!allowed(&out, WEB_A, CLIENT_B, SCTP, 80));
    assert!(allowed(&out, WEB_A, CLIENT_B, SCTP, 7777));
    assert!(!allowed(&out, WEB_A, CLIENT_B, TCP, 7777));
    assert!(
        allowed(&out, WEB_A, CLIENT_B, UDP, 12345),
        "a protocol without port: all its ports"
    );
    let client = ep(&out, "b", "client");
    assert!(client
        .entries
        .keys()
        .any(|k| k.protocol == UDP && k.port == PORT_ANY));
    assert!(client
        .entries
        .keys()
        .any(|k| k.protocol == SCTP && k.port == 7777));
}

// ---------------------------------------------------------------- union, redundancy

#[test]
fn several_policies_are_a_union() {
    let c = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 443}]}]
"#,
    );
    let out = compile_all(&c);
    let web = ep(&out, "a", "web");
    assert_eq!(
        web.ingress_policies,
        [ObjectKey::new("a", "one"), ObjectKey::new("a", "two")]
    );
    assert!(allowed(&out, DB_A, WEB_A, TCP, 80));
    assert!(!allowed(&out, DB_A, WEB_A, TCP, 443));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 443));
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    let v = explain(
        &out,
        Party::Address(ip(CLIENT_B)),
        Party::Address(ip(WEB_A)),
        TCP,
        443,
    )
    .unwrap();
    assert_eq!(v.rules.len(), 1);
    assert_eq!(v.rules[0].policy, ObjectKey::new("a", "two"));
    assert!(v.reason.contains("a/two ingress[0]"), "{}", v.reason);
    let v = explain(
        &out,
        Party::Address(ip(CLIENT_B)),
        Party::Address(ip(WEB_A)),
        TCP,
        80,
    )
    .unwrap();
    assert_eq!(
        v.denied_by,
        [ObjectKey::new("a", "one"), ObjectKey::new("a", "two")]
    );
    assert!(v.reason.starts_with("denied"), "{}", v.reason);
}

#[test]
fn redundant_entries_are_left_out() {
    let c = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 80}, {port: 81, endPort: 90}]
  - ports: [{port: 80}]
  - from: [{podSelector: {}}]
"#,
    );
    let out = compile_all(&c);
    let web = ep(&out, "a", "web");
    // Every pod of `a` is allowed everything by rule 2; port 80 from anyone
    // by rule 1; the rest adds nothing.
    let mut kinds: Vec<(bool, u8, u16)> = web
        .entries
        .keys()
        .map(|k| (k.identity == IDENTITY_ANY, k.protocol, k.port))
        .collect();
    kinds.dedup();
    assert_eq!(kinds, [(true, TCP, 80), (false, PROTO_ANY, PORT_ANY)]);
    assert!(web.port_ranges.is_empty());
    assert!(allowed(&out, DB_A, WEB_A, UDP, 9));
    assert!(allowed(&out, CLIENT_B, WEB_A, TCP, 80));
    assert!(!allowed(&out, CLIENT_B, WEB_A, TCP, 85));
}

// ---------------------------------------------------------------- identities, endpoints

#[test]
fn identities_are_stable_across_compiles() {
    let c1 = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 172.16.0.0/12}}]}]}",
    );
    let first = compile_all(&c1);
    let web_a = first.identity_of(ip(WEB_A));
    let cidr = first.identity_of(ip("172.16.0.1"));
    // A new pod with new labels and a new policy prefix; one pod goes.
    let mut c2 = c1.clone();
    c2.insert_pod(Pod::new("b", "new", [("app", "new")]).with_ip(ip("10.0.2.9")));
    c2.remove_pod(&ObjectKey::new("a", "db"));
    c2.insert_policy(
        serde_yaml::from_str(
            "metadata: {name: q, namespace: b}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 100.64.0.0/10}}]}]}",
        )
        .unwrap(),
    );
    let second = compile(
        &c2,
        &local(&c2),
        &CompileOptions::default(),
        &first.identities,
        8,
    )
    .unwrap();
    assert_eq!(second.identity_of(ip(WEB_A)), web_a);
    assert_eq!(second.identity_of(ip("172.16.0.1")), cidr);
    let new = second.identity_of(ip("10.0.2.9"));
    let old_ids: Vec<u32> = first.identities.iter().map(|(id, _)| id).collect();
    assert!(
        !old_ids.contains(&new),
        "a new class gets a number never used before"
    );
    // Same input twice: identical output.
    let again = compile(
        &c2,
        &local(&c2),
        &CompileOptions::default(),
        &first.identities,
        8,
    )
    .unwrap();
    assert_eq!(again, second);
}

#[test]
fn endpoints_without_a_known_pod() {
    let c = cluster(BASE);
    let mut eps = local(&c);
    eps.push(LocalEndpoint {
        endpoint_id: 50,
        pod: Some(ObjectKey::new("a", "not-yet")),
        ips: vec![ip("10.0.1.50")],
    });
    eps.push(LocalEndpoint {
        endpoint_id: 51,
        pod: None,
        ips: vec![ip("10.0.1.51")],
    });
    let out = compile(
        &c,
        &eps,
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap();
    assert_eq!(
        out.endpoints[&50].flags, 0,
        "unknown pod: not programmed, fail-closed"
    );
    assert_eq!(out.endpoints[&50].status, EndpointStatus::UnknownPod);
    let v = explain(&out, Party::Endpoint(50), Party::Endpoint(1), TCP, 80).unwrap();
    assert!(
        !v.allowed && v.egress.as_ref().unwrap().outcome == Outcome::NotProgrammed,
        "{v}"
    );
    assert_eq!(
        out.endpoints[&51].flags,
        POLICY_F_PROGRAMMED | POLICY_F_ALLOW_HOST
    );
    assert!(
        explain(&out, Party::Endpoint(51), Party::Endpoint(1), TCP, 80)
            .unwrap()
            .allowed
    );
    assert_eq!(
        out.identity_of(ip("10.0.1.51")),
        IDENTITY_WORLD,
        "no pod, no pod identity"
    );

    let open = CompileOptions {
        unknown_pod_fail_closed: false,
        ..CompileOptions::default()
    };
    let out = compile(&c, &eps, &open, &IdentityTable::new(), 1).unwrap();
    assert_ne!(out.endpoints[&50].flags & POLICY_F_PROGRAMMED, 0);

    let dup = [eps[0].clone(), eps[0].clone()];
    assert_eq!(
        compile(
            &c,
            &dup,
            &CompileOptions::default(),
            &IdentityTable::new(),
            1
        ),
        Err(CompileError::DuplicateEndpoint(1))
    );
}

#[test]
fn local_endpoint_addresses_win_over_status() {
    // A local pod's addresses come from the CNI, not from its status.
    let c = cluster(BASE);
    let eps = [LocalEndpoint {
        endpoint_id: 9,
        pod: Some(ObjectKey::new("a", "web")),
        ips: vec![ip("10.0.1.99"), ip("fd00::99")],
    }];
    let out = compile(
        &c,
        &eps,
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap();
    let web = out.identity_of(ip("10.0.1.99"));
    assert!(web >= IDENTITY_FIRST_ALLOCATED);
    assert_eq!(
        out.identity_of(ip("fd00::99")),
        web,
        "no ipBlock: one class for both families"
    );
    assert_eq!(out.identity_of(ip(WEB_A)), IDENTITY_WORLD);
    assert_eq!(out.identity_of(ip(DB_A)), out.identity_of(ip(DB_A)));
    assert!(
        out.identity_of(ip(DB_A)) >= IDENTITY_FIRST_ALLOCATED,
        "remote pods keep status addresses"
    );
}

#[test]
fn host_network_and_finished_pods_get_no_identity() {
    let c = cluster(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hn}
spec: {hostNetwork: true}
status: {podIP: 192.168.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: done}
status: {phase: Succeeded, podIP: 10.0.0.5}
"#,
    );
    let out = compile(
        &c,
        &[],
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap();
    assert_eq!(out.identities.len(), 0);
    assert_eq!(out.identity_of(ip("192.168.0.5")), IDENTITY_WORLD);
}

#[test]
fn address_conflicts_are_warnings() {
    let c = cluster(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {n: "1"}}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, labels: {n: "2"}}
status: {podIP: 10.0.0.5}
"#,
    );
    let out = compile(
        &c,
        &[],
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap();
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("default/p1 keeps it"));
}

#[test]
fn kernel_entries() {
    let out = compile_all(&ports_policy(
        "egress",
        "    - port: 53\n      protocol: UDP\n",
    ));
    let client = ep(&out, "b", "client");
    let entries: Vec<_> = client.policy_entries().collect();
    assert!(!entries.is_empty());
    for (k, v) in &entries {
        assert_eq!(k.endpoint_id, client.endpoint_id);
        assert_eq!(k.direction, cni_ebpf_common::policy::DIRECTION_EGRESS);
        assert_eq!((k.protocol, k.port), (UDP, 53));
        let rule = out.rule(v.rule_index).unwrap();
        assert_eq!(
            (rule.policy.to_string().as_str(), rule.direction, rule.rule),
            ("b/p", Direction::Egress, 0)
        );
        assert_eq!(
            rule.to_string(),
            "b/p egress[0] (to namespaces {<all>}, ports UDP/53)"
        );
    }
    assert!(out.rule(0).is_none());
    let json = serde_json::to_value(&out).unwrap();
    assert!(json["endpoints"].is_object() && json["rules"].is_array());
}

#[test]
fn explain_reasons_and_loopback() {
    let out = compile_all(&ingress_to_web_a(
        "    - podSelector: {matchLabels: {app: db}}\n",
    ));
    let v = explain(
        &out,
        Party::Address(ip(WEB_A)),
        Party::Address(ip(WEB_A)),
        TCP,
        80,
    )
    .unwrap();
    assert!(v.allowed && v.reason.contains("itself"));
    let v = explain(
        &out,
        Party::Address(ip(CLIENT_B)),
        Party::Address(ip(WEB_A)),
        TCP,
        80,
    )
    .unwrap();
    assert!(!v.allowed);
    assert!(
        v.reason.contains("isolated by a/p") && v.reason.contains("pods b {app=client}"),
        "{}",
        v.reason
    );
    let v = explain(
        &out,
        Party::Address(ip("198.51.100.1")),
        Party::Address(ip("203.0.113.1")),
        TCP,
        80,
    )
    .unwrap();
    assert!(v.allowed && v.reason.contains("neither end"));
    assert_eq!(
        explain(
            &out,
            Party::Endpoint(999),
            Party::Address(ip(WEB_A)),
            TCP,
            80
        ),
        Err(ExplainError::UnknownEndpoint(999))
    );
    assert_eq!(
        explain(
            &out,
            Party::Address(ip("fd00::1")),
            Party::Address(ip(WEB_A)),
            TCP,
            80
        ),
        Err(ExplainError::NoCommonFamily)
    );
}

#[test]
fn the_lookup_order_is_the_documented_one() {
    // Hand-made entries: exact beats any-port beats ranges beats any-proto;
    // the peer's own identity before IDENTITY_ANY.
    let mut e = EndpointPolicy {
        endpoint_id: 1,
        pod: None,
        ips: vec![],
        status: EndpointStatus::NoPod,
        flags: POLICY_F_PROGRAMMED | POLICY_F_INGRESS_ISOLATED,
        ingress_policies: vec![],
        egress_policies: vec![],
        entries: Default::default(),
        port_ranges: Default::default(),
    };
    let k = |id, proto, port| EntryKey {
        direction: Direction::Ingress,
        identity: id,
        protocol: proto,
        port,
    };
    e.entries.insert(k(300, TCP, 80), 1);
    e.entries.insert(k(300, TCP, PORT_ANY), 2);
    e.entries.insert(k(300, PROTO_ANY, PORT_ANY), 4);
    e.port_ranges.insert(
        k(300, UDP, PORT_ANY),
        vec![ports::PortRange {
            first: 10,
            last: 20,
            rule_index: 3,
        }],
    );
    e.entries.insert(k(IDENTITY_ANY, TCP, 80), 5);
    let at = |id, proto, port| e.lookup(Direction::Ingress, id, proto, port);
    assert_eq!(at(300, TCP, 80), Some(1));
    assert_eq!(at(300, TCP, 81), Some(2));
    assert_eq!(at(300, UDP, 15), Some(3));
    assert_eq!(at(300, UDP, 25), Some(4));
    assert_eq!(at(301, TCP, 80), Some(5));
    assert_eq!(at(301, TCP, 81), None);
    assert_eq!(e.lookup(Direction::Egress, 300, TCP, 80), None);
}

// ---------------------------------------------------------------- performance

#[test]
fn compiling_ten_thousand_rules() {
    // 20 namespaces × 50 pods (10 apps), 2000 policies × 5 rules, 100
    // local endpoints.
    let mut c = Cluster::new();
    for n in 0..20u32 {
        let ns = format!("ns{n}");
        c.insert_namespace(Namespace::new(
            &ns,
            [("team", if n % 2 == 0 { "even" } else { "odd" })],
        ));
        for p in 0..50u32 {
            let app = format!("app{}", p % 10);
            let pod = Pod::new(&ns, &format!("pod{p}"), [("app", app.as_str())])
                .with_port(Some("http"), Protocol::Tcp, 8000 + (p % 3) as u16)
                .with_ip(IpAddr::from([10, 1, n as u8, p as u8 + 1]));
            c.insert_pod(pod);
        }
    }
    for i in 0..2000u32 {
        let ns = i % 20;
        let yaml = format!(
            r#"metadata: {{name: pol{i}, namespace: ns{ns}}}
spec:
  podSelector: {{matchLabels: {{app: app{}}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}]
    ports: [{{port: {}}}]
  - from: [{{namespaceSelector: {{matchLabels: {{team: even}}}}, podSelector: {{matchLabels: {{app: app{}}}}}}}]
    ports: [{{port: http}}]
  - from: [{{ipBlock: {{cidr: 10.{}.0.0/16, except: [10.{}.{}.0/24]}}}}]
  egress:
  - to: [{{namespaceSelector: {{}}}}]
    ports: [{{port: 5000, endPort: 5100}}, {{protocol: UDP, port: 53}}]
  - to: [{{podSelector: {{}}}}]
    ports: [{{port: http}}]
"#,
            i % 10,
            (i + 1) % 10,
            1000 + i % 1000,
            (i + 2) % 10,
            i % 250,
            i % 250,
            i % 200
        );
        c.insert_policy(serde_yaml::from_str(&yaml).unwrap());
    }
    let endpoints: Vec<LocalEndpoint> = c
        .pods()
        .filter(|p| p.metadata.name.ends_with('0') || p.metadata.name.ends_with('5'))
        .enumerate()
        .map(|(i, p)| LocalEndpoint {
            endpoint_id: i as u64 + 1,
            pod: Some(p.key()),
            ips: p.status_ips(),
        })
        .collect();
    let rules: usize = c
        .policies()
        .map(|p| p.spec.ingress.len() + p.spec.egress.len())
        .sum();
    assert_eq!(rules, 10_000);
    let start = Instant::now();
    let out = compile(
        &c,
        &endpoints,
        &CompileOptions::default(),
        &IdentityTable::new(),
        1,
    )
    .unwrap();
    let first = start.elapsed();
    // The machine may be shared: the best of a few recompiles is the
    // compiler's own cost.
    let mut best = first;
    let mut again = out.clone();
    for revision in 2..7 {
        let start = Instant::now();
        let result = compile(
            &c,
            &endpoints,
            &CompileOptions::default(),
            &out.identities,
            revision,
        )
        .unwrap();
        best = best.min(start.elapsed());
        again = result;
    }
    let entries: usize = out.endpoints.values().map(|e| e.entries.len()).sum();
    eprintln!(
        "compiled {rules} rules, {} pods, {} endpoints: {} identities, {} ipcache entries, \
         {entries} policy entries in {first:?} (best of 6: {best:?}){}",
        c.pods().count(),
        endpoints.len(),
        out.identities.len(),
        out.ipcache.len(),
        if cfg!(debug_assertions) {
            " [debug build]"
        } else {
            ""
        }
    );
    assert_eq!(again.identities, out.identities);
    assert!(entries > 0);
}

// ---------------------------------------------------------------- manifests

mod manifests_tests {
    use std::fs;

    use super::*;

    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: default}\n";

    #[test]
    fn unknown_fields_are_refused_with_file_object_and_field() {
        let e = manifest_error(&format!(
            "{NP}spec:\n  podSelector: {{}}\n  ingress:\n  - form: []\n"
        ));
        assert!(
            e.starts_with("bad.yaml: NetworkPolicy default/np: spec.ingress[0]"),
            "{e}"
        );
        assert!(e.contains("unknown field `form`"), "{e}");
        let e = manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p, lables: {a: b}}\n");
        assert!(
            e.contains("Pod default/p") && e.contains("unknown field `lables`"),
            "{e}"
        );
        let e = manifest_error(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protcol: TCP}]}]}\n",
        );
        assert!(
            e.contains("spec.containers[0].ports[0]") && e.contains("`protcol`"),
            "{e}"
        );
        let e = manifest_error(&format!("{NP}spec: {{podSelector: {{}}, ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, exept: []}}}}]}}]}}\n"));
        assert!(
            e.contains("spec.ingress[0].from[0].ipBlock") && e.contains("`exept`"),
            "{e}"
        );
        let e = manifest_error(&format!("{NP}spec: {{podSelector: {{}}}}\nstatus: {{}}\n"));
        assert!(e.contains("unknown field `status`"), "{e}");
    }

    #[test]
    fn kubectl_output_with_ignored_fields_parses() {
        let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c
  namespace: default
  uid: 1b2c
  resourceVersion: "123"
  creationTimestamp: "2024-01-01T00:00:00Z"
  generateName: web-
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: x}]
  managedFields: [{manager: kubectl}]
  annotations: {note: kept}
  labels: {app: web}
spec:
  nodeName: node1
  restartPolicy: Always
  volumes: [{name: v, emptyDir: {}}]
  containers:
  - name: web
    image: nginx
    imagePullPolicy: IfNotPresent
    resources: {}
    volumeMounts: [{name: v, mountPath: /v}]
    ports: [{name: http, containerPort: 80, protocol: TCP}]
status:
  phase: Running
  conditions: [{type: Ready, status: "True"}]
  hostIP: 192.168.1.1
  podIP: 10.0.0.7
  podIPs: [{ip: 10.0.0.7}, {ip: "fd00::7"}]
  qosClass: BestEffort
  startTime: "2024-01-01T00:00:00Z"
"#;
        let c = cluster(pod);
        let p = c.pod(&ObjectKey::new("default", "web-7d4b9c")).unwrap();
        assert_eq!(p.status_ips(), [ip("10.0.0.7"), ip("fd00::7")]);
        assert_eq!(
            p.named_port("http", Protocol::Tcp)
                .into_iter()
                .collect::<Vec<_>>(),
            [80]
        );
        assert_eq!(p.metadata.annotations["note"], "kept");
        assert_eq!(p.spec.node_name.as_deref(), Some("node1"));
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR \"10.0.0.0/33\""),
            ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]}", "ipBlock.cidr", "invalid CIDR"),
            ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}", "spec.ingress[0].from[0].ipBlock.except[0]", "not strictly inside"),
            ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}", "ipBlock.except[0]", "not strictly inside"),
            ("spec: {podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}", "spec.podSelector.matchExpressions[0].operator", "unknown variant `Equals`"),
            ("spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}", "spec.podSelector.matchExpressions[0].values", "needs at least one value"),
            ("spec: {podSelector: {}, egress: [{ports: [{port: 70000}]}]}", "spec.egress[0].ports[0].port", "out of range"),
            ("spec: {podSelector: {}, egress: [{ports: [{port: 0}]}]}", "spec.egress[0].ports[0].port", "out of range"),
            ("spec: {podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}", "spec.egress[0].ports[0].endPort", "less than port 90"),
            ("spec: {podSelector: {}, egress: [{ports: [{port: http, endPort: 80}]}]}", "spec.egress[0].ports[0].endPort", "named port"),
            ("spec: {podSelector: {}, egress: [{ports: [{endPort: 80}]}]}", "spec.egress[0].ports[0].endPort", "needs a numeric port"),
            ("spec: {podSelector: {}, egress: [{ports: [{port: \"80\"}]}]}", "spec.egress[0].ports[0].port", "invalid port name"),
            ("spec: {podSelector: {}, egress: [{ports: [{protocol: ICMP}]}]}", "spec.egress[0].ports[0].protocol", "unknown variant `ICMP`"),
            ("spec: {podSelector: {}, policyTypes: [Ingress, Both]}", "spec.policyTypes[1]", "unknown variant `Both`"),
            ("spec: {podSelector: {}, ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]", "needs podSelector"),
            ("spec: {podSelector: {}, ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}", "spec.ingress[0].from[0].ipBlock", "cannot be combined"),
        ];
        for (spec, field, message) in cases {
            let e = manifest_error(&format!("{NP}{spec}\n"));
            assert!(e.starts_with("bad.yaml: NetworkPolicy default/np: "), "{e}");
            assert!(e.contains(field), "{spec}: expected field {field} in: {e}");
            assert!(e.contains(message), "{spec}: expected {message:?} in: {e}");
        }
        let e = manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}\n");
        assert!(
            e.contains("spec.containers[0].ports[0].containerPort") && e.contains("out of range"),
            "{e}"
        );
        let e = manifest_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n");
        assert!(e.contains("Namespace Bad_Name: metadata.name"), "{e}");
        let e = manifest_error(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: \"a b\"}}\n",
        );
        assert!(e.contains("metadata.labels.app"), "{e}");
    }

    #[test]
    fn kinds_names_and_namespaces() {
        let e = manifest_error("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
        assert!(
            e.contains("Deployment default/d: kind: unknown kind apps/v1 Deployment"),
            "{e}"
        );
        let e = manifest_error(
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: d}\n",
        );
        assert!(
            e.contains("unknown kind networking.k8s.io/v1beta1 NetworkPolicy"),
            "{e}"
        );
        let e = manifest_error("kind: Pod\nmetadata: {name: d}\n");
        assert!(e.contains("apiVersion: missing"), "{e}");
        let e = manifest_error(&format!("{NP}spec: {{}}\n---\n{NP}spec: {{}}\n"));
        assert!(e.contains("NetworkPolicy default/np: defined twice"), "{e}");
        let e =
            manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nowhere}\n");
        assert!(
            e.contains("Pod nowhere/p: metadata.namespace: namespace \"nowhere\" is not defined"),
            "{e}"
        );
        let e =
            manifest_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: n, namespace: x}\n");
        assert!(e.contains("not namespaced"), "{e}");
        let e = manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n");
        assert!(e.starts_with("bad.yaml: document 1:"), "{e}");
        // Same name, different kinds or namespaces: fine.
        let c = cluster(&format!(
            "{NP}spec: {{}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: np}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n---\n{}spec: {{}}\n",
            NP.replace("namespace: default", "namespace: other")
        ));
        assert_eq!(c.policies().count(), 2);
    }

    #[test]
    fn null_lists_and_lists_of_objects() {
        let c = cluster(&format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n  spec:\n    podSelector:\n    ingress:\n    policyTypes:\n",
            NP.trim_end().replace('\n', "\n  ")
        ));
        let p = c.policy(&ObjectKey::new("default", "np")).unwrap();
        assert!(p.spec.pod_selector.is_empty() && p.spec.ingress.is_empty());
        assert!(p.affects_ingress() && !p.affects_egress());
    }

    #[test]
    fn a_directory_loads_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("10-ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("20-policy.json"),
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x","uid":"u","resourceVersion":"1"},
               "spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.1.2.3/8"}}],"ports":[{"protocol":"TCP","port":80}]}],"policyTypes":["Ingress"]}}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("30-more.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n",
        )
        .unwrap();
        fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/x.yaml"), "garbage: [").unwrap();
        let c = load_dir(dir.path()).unwrap();
        assert_eq!(c.pods().count(), 2);
        let p = c.policy(&ObjectKey::new("x", "p")).unwrap();
        assert_eq!(
            p.spec.ingress[0].from[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr
                .to_string(),
            "10.0.0.0/8",
            "host bits cleared"
        );

        fs::write(
            dir.path().join("40-bad.yaml"),
            format!("{NP}spec: {{podSelector: {{matchLabels: {{a: b}}, matchExpresions: []}}}}\n"),
        )
        .unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("40-bad.yaml: NetworkPolicy default/np: spec.podSelector")
                && e.contains("matchExpresions"),
            "{e}"
        );
        assert!(load_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn cluster_round_trips_as_json() {
        let c = cluster(BASE);
        let json = serde_json::to_string(&c).unwrap();
        let back: Cluster = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // The API server's JSON for a NetworkPolicy.
        let api = r#"{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1",
            "metadata":{"name":"p","namespace":"a","uid":"5","generation":2,"creationTimestamp":"2024-01-01T00:00:00Z",
                        "managedFields":[{"manager":"kubectl","operation":"Update"}]},
            "spec":{"podSelector":{"matchLabels":{"app":"web"}},
                    "ingress":[{"ports":[{"protocol":"TCP","port":"http"},{"protocol":"UDP","port":5000,"endPort":5010}],
                                "from":[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"In","values":["b"]}]},"podSelector":{}}]}],
                    "policyTypes":["Ingress"]}}"#;
        let p: NetworkPolicy = serde_json::from_str(api).unwrap();
        p.validate().unwrap();
        assert_eq!(p.spec.ingress[0].ports.len(), 2);
        let out: NetworkPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(out, p);
    }

    #[test]
    fn lenient_mode_ignores_fields_from_a_newer_api_server() {
        let json = r#"{"metadata":{"name":"p","futureMeta":1},"spec":{"containers":[],"futureSpec":true}}"#;
        assert!(serde_json::from_str::<Pod>(json).is_err());
        let pod: Pod = ignoring_unknown_fields(|| serde_json::from_str(json)).unwrap();
        assert_eq!(pod.metadata.name, "p");
        assert!(
            serde_json::from_str::<Pod>(json).is_err(),
            "strict again afterwards"
        );
    }
}
