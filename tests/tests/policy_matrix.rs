//! NetworkPolicy reachability matrices end to end, as the upstream e2e
//! "truth table" tests do it: namespaces x, y, z (labelled `ns: <name>`),
//! pods a, b, c in each (labelled `pod: <name>`), each serving TCP and UDP
//! on ports 80 and 81; for every scenario of
//! `cni-agent/tests/policy_scenarios/` the policies are applied, `sluicectl
//! sync` returns once they are enforced, every pod pair is probed and the
//! full 9×9 matrix is compared with the expectation.
//!
//! One world for the whole file ([`tests::policy_world`]): a node netns,
//! the real agent (`--manifests`), 9 pod netns added through the real
//! `sluice` plugin (routed mode, sluice-ipam) with exactly the scenario
//! cluster's fixed addresses 10.244.{1,2,3}.{10,11,12} (`runtimeConfig.ips`)
//! and `K8S_POD_NAMESPACE`/`K8S_POD_NAME` naming the cluster's pods.
//!
//! Probes (all pairs of a scenario at once, on a bounded thread pool):
//! - TCP: connect within 300 ms (a drop is a timeout: the SYN is only
//!   retransmitted after 1 s, so this is the first packet's verdict);
//! - UDP: one datagram echoed within 300 ms;
//! - SCTP: this kernel has no SCTP sockets, so SCTP probes run the pinned
//!   `from_pod` and `to_pod` programs (checked to be the ones attached to
//!   the pods' veths, bound to this world's live maps) under
//!   BPF_PROG_TEST_RUN on a crafted INIT and its INIT-ACK, in the order a
//!   real association's first exchange meets them; every run must pass
//!   (TC_ACT_OK or TCX_NEXT) for "connects", TC_ACT_SHOT is a drop.
//! - A pod to itself: measured for real for TCP and UDP (it never leaves
//!   the pod's netns); for SCTP "connects" by construction. The files
//!   expect `.` on the diagonal.
//!
//! Expectations: the probes of the scenario file (written from the
//! specification), a few more written from the specification here (SCTP in
//! `sctp-only`, UDP 81 in `udp-only`: the files probe TCP only there), and
//! for every other protocol × port of TCP, UDP, SCTP × 80, 81 the matrix the
//! compiler predicts (`explain` on the compiled maps, which the compiler's
//! unit tests hold to the files): so the datapath is checked on every
//! protocol in every scenario. A mismatch prints both matrices, every
//! differing cell with its outcome, the compiler's prediction, a re-probe
//! with a long timeout, and `sluicectl explain` for the first cells.
//!
//! Also: a live update (an established allowed TCP connection survives an
//! unrelated policy change; a change that denies the flow cuts it and new
//! connections), and an agent restart (SIGKILL, restart: a denied pair
//! never connects and an allowed pair never fails meanwhile).
//!
//! Needs root; one test, which prints a summary (`--nocapture`):
//! `cargo build -p cni-agent -p cni-plugin && cargo test -p tests --test
//! policy_matrix -- --test-threads=1 --nocapture`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    panic::AssertUnwindSafe,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cni_agent::policy::{
    compile,
    scenarios::{self, Matrix, Scenario, ScenarioSet, SCENARIO_DIR},
    CompileOptions, IdentityTable, Manifests, NetworkPolicy, Object, Protocol,
};
use tests::{
    policy_world::{Measured, Outcome, PolicyWorld, PROBE_TIMEOUT},
    require_root,
};

/// Every protocol × port each scenario is measured on.
const SWEEP: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
    (Protocol::Sctp, 80),
    (Protocol::Sctp, 81),
];

/// Where an expected matrix comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The scenario file (the specification).
    File,
    /// Written from the specification in this file.
    Spec,
    /// The compiler's prediction (`explain`).
    Compiler,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::File => "scenario file",
            Source::Spec => "spec (this test)",
            Source::Compiler => "compiler prediction",
        })
    }
}

const HEADER: &str = "-   x/a x/b x/c y/a y/b y/c z/a z/b z/c\n";

/// Everyone reaches everyone.
const ALL: &str = "x/a . . . . . . . . .
x/b . . . . . . . . .
x/c . . . . . . . . .
y/a . . . . . . . . .
y/b . . . . . . . . .
y/c . . . . . . . . .
z/a . . . . . . . . .
z/b . . . . . . . . .
z/c . . . . . . . . .
";

/// Nobody but x/a itself reaches x/a.
const ONLY_SELF_TO_XA: &str = "x/a . . . . . . . . .
x/b X . . . . . . . .
x/c X . . . . . . . .
y/a X . . . . . . . .
y/b X . . . . . . . .
y/c X . . . . . . . .
z/a X . . . . . . . .
z/b X . . . . . . . .
z/c X . . . . . . . .
";

/// Probes the scenario files lack, written from the specification: the
/// files probe TCP only in `sctp-only` and `udp-only`.
fn spec_probes(scenario: &str) -> Vec<(Protocol, u16, Matrix)> {
    let m = |rows: &str| Matrix::parse(&format!("{HEADER}{rows}")).expect("a matrix");
    match scenario {
        // x/a accepts SCTP 80 from everyone, nothing else.
        "sctp-only" => vec![
            (Protocol::Sctp, 80, m(ALL)),
            (Protocol::Sctp, 81, m(ONLY_SELF_TO_XA)),
            (Protocol::Udp, 80, m(ONLY_SELF_TO_XA)),
        ],
        // x/a accepts UDP 80 from everyone, nothing else.
        "udp-only" => vec![
            (Protocol::Udp, 81, m(ONLY_SELF_TO_XA)),
            (Protocol::Sctp, 80, m(ONLY_SELF_TO_XA)),
        ],
        _ => Vec::new(),
    }
}

/// One expected matrix.
struct Expectation {
    protocol: Protocol,
    port: u16,
    matrix: Matrix,
    source: Source,
}

/// The expectations of a scenario: its file's probes, then the spec ones
/// of this file, then the compiler's prediction for the rest of [`SWEEP`].
fn expectations(s: &Scenario, predicted: &dyn Fn(Protocol, u16) -> Matrix) -> Vec<Expectation> {
    let mut out: Vec<Expectation> = s
        .probes
        .iter()
        .map(|p| Expectation {
            protocol: p.protocol,
            port: p.port,
            matrix: p.expected.clone(),
            source: Source::File,
        })
        .collect();
    let has = |out: &[Expectation], protocol: Protocol, port: u16| {
        out.iter().any(|e| e.protocol == protocol && e.port == port)
    };
    for (protocol, port, matrix) in spec_probes(&s.name) {
        if !has(&out, protocol, port) {
            out.push(Expectation {
                protocol,
                port,
                matrix,
                source: Source::Spec,
            });
        }
    }
    for (protocol, port) in SWEEP {
        if !has(&out, protocol, port) {
            out.push(Expectation {
                protocol,
                port,
                matrix: predicted(protocol, port),
                source: Source::Compiler,
            });
        }
    }
    out
}

fn proto_arg(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The report of one mismatching matrix.
fn mismatch_report(
    w: &PolicyWorld,
    s: &Scenario,
    e: &Expectation,
    got: &Measured,
    predicted: &Matrix,
) -> String {
    let diff = e.matrix.differences(&got.matrix);
    let mut text = format!(
        "scenario {} ({}): {}/{}: {} cells differ from the {}\n  {}\nexpected:\n{}measured:\n{}",
        s.name,
        s.file.file_name().unwrap_or_default().to_string_lossy(),
        got.protocol,
        got.port,
        diff.len(),
        e.source,
        s.description,
        e.matrix,
        got.matrix
    );
    for (n, (from, to, expected)) in diff.iter().enumerate() {
        let outcome = &got.outcomes[&(from.clone(), to.clone())];
        let compiler = predicted.get(from, to).unwrap_or(false);
        let again = match got.protocol {
            Protocol::Tcp => w.tcp_outcome(
                &from.to_string(),
                &to.to_string(),
                got.port,
                Duration::from_secs(2),
            ),
            Protocol::Udp => w.udp_outcome(
                &from.to_string(),
                &to.to_string(),
                got.port,
                Duration::from_secs(2),
            ),
            Protocol::Sctp => w
                .sctp_probe(
                    w.pod(&from.to_string()).ip,
                    w.pod(&to.to_string()).ip,
                    got.port,
                )
                .unwrap_or_else(|e| Outcome::Error(format!("{e:#}"))),
        };
        let hint = match (compiler == *expected, e.source) {
            (true, _) => "the compiler agrees with the expectation: agent sync or datapath",
            (false, Source::Compiler) => "impossible: the expectation is the compiler's",
            (false, _) => "the compiler disagrees with the expectation: compiler or expectation",
        };
        text.push_str(&format!(
            "  {from} -> {to}: expected {}, measured {outcome}; compiler predicts {}; re-probed (2 s): {again}; {hint}\n",
            if *expected { "connects" } else { "blocked" },
            if compiler { "connects" } else { "blocked" },
        ));
        if n < 3 {
            let explain = w
                .sluicectl(&[
                    "explain",
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--port",
                    &got.port.to_string(),
                    "--proto",
                    proto_arg(got.protocol),
                ])
                .unwrap_or_else(|e| format!("{e:#}"));
            for line in explain.lines() {
                text.push_str(&format!("      | {line}\n"));
            }
        }
    }
    text
}

/// Prints a failure as it happens and keeps it for the verdict.
fn fail(failures: &mut Vec<String>, text: String) {
    eprintln!("{text}");
    failures.push(text);
}

/// Every scenario: apply, sync, measure, compare. Returns the failures.
fn run_scenarios(w: &PolicyWorld, set: &ScenarioSet) -> Vec<String> {
    let endpoints = set.local_endpoints();
    let mut failures = Vec::new();
    let total = Instant::now();
    let mut matrices = 0;
    for (n, s) in set.scenarios.iter().enumerate() {
        let started = Instant::now();
        let compiled = match compile(
            &s.cluster(&set.cluster),
            &endpoints,
            &CompileOptions::default(),
            &IdentityTable::new(),
            1,
        ) {
            Ok(c) => c,
            Err(e) => {
                fail(
                    &mut failures,
                    format!("scenario {}: the compiler refuses it: {e}", s.name),
                );
                continue;
            }
        };
        let predicted = |protocol: Protocol, port: u16| {
            scenarios::predicted(&compiled, &endpoints, &set.pods, protocol, port)
        };
        let wanted = expectations(s, &predicted);
        let sync = match w.apply(&s.policies) {
            Ok(v) => v,
            Err(e) => {
                fail(
                    &mut failures,
                    format!("scenario {}: apply/sync failed: {e:#}", s.name),
                );
                continue;
            }
        };
        let synced = started.elapsed();
        let probes: Vec<(Protocol, u16)> = wanted.iter().map(|e| (e.protocol, e.port)).collect();
        let measured = match w.probe_matrices(&probes, PROBE_TIMEOUT) {
            Ok(m) => m,
            Err(e) => {
                fail(
                    &mut failures,
                    format!("scenario {}: probing failed: {e:#}", s.name),
                );
                continue;
            }
        };
        let mut bad = Vec::new();
        for (e, got) in wanted.iter().zip(&measured) {
            matrices += 1;
            // By cell: a file may list the pods in another order.
            if !e.matrix.differences(&got.matrix).is_empty() {
                bad.push(format!("{}/{}", e.protocol, e.port));
                fail(
                    &mut failures,
                    mismatch_report(w, s, e, got, &predicted(e.protocol, e.port)),
                );
            }
            let odd: Vec<String> = got
                .outcomes
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Refused | Outcome::Error(_)))
                .map(|((f, t), o)| format!("{f} -> {t} {}/{}: {o}", e.protocol, e.port))
                .collect();
            if !odd.is_empty() {
                fail(
                    &mut failures,
                    format!(
                        "scenario {}: probes that neither connected nor timed out:\n  {}",
                        s.name,
                        odd.join("\n  ")
                    ),
                );
            }
        }
        let sources: Vec<String> = wanted
            .iter()
            .map(|e| {
                let tag = match e.source {
                    Source::File => "",
                    Source::Spec => "s",
                    Source::Compiler => "c",
                };
                format!("{}/{}{tag}", proto_arg(e.protocol), e.port)
            })
            .collect();
        eprintln!(
            "[{:>2}/{}] {:<36} {} in {:>4} ms (sync {:>4} ms, agent {} µs, revision {}) [{}]",
            n + 1,
            set.scenarios.len(),
            s.name,
            if bad.is_empty() {
                "ok  ".to_owned()
            } else {
                format!("FAIL {}", bad.join(","))
            },
            started.elapsed().as_millis(),
            synced.as_millis(),
            sync["syncMicros"],
            sync["revision"],
            sources.join(" ")
        );
    }
    eprintln!(
        "{} scenarios, {matrices} matrices ({} cells) in {:?}; c = compiler prediction, s = spec in this test, else the scenario file",
        set.scenarios.len(),
        matrices * 81,
        total.elapsed()
    );
    failures
}

/// Parses policy manifests written in this file.
fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    let mut m = Manifests::new();
    m.add_yaml("policy_matrix.rs", yaml)
        .expect("valid manifests");
    m.objects()
        .iter()
        .filter_map(|(_, o)| match o {
            Object::NetworkPolicy(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// x/a accepts x/b on TCP 80 (and nothing else).
const ALLOW_B_TO_A_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

/// z/c accepts z/a on TCP 81 only: nothing to do with x.
const UNRELATED_Z: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-a-81, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{protocol: TCP, port: 81}]
"#;

/// Nothing gets into namespace x.
const DENY_X: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

/// One echo round trip on an open connection.
fn echo(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

fn check(failures: &mut Vec<String>, phase: &str, ok: bool, what: String) {
    eprintln!("{phase}: {} {what}", if ok { "ok  " } else { "FAIL" });
    if !ok {
        failures.push(format!("{phase}: {what}"));
    }
}

const SHORT: Duration = Duration::from_millis(500);
const LONG: Duration = Duration::from_secs(2);

/// An established allowed connection survives an unrelated change; a
/// change that denies the flow cuts it and new connections.
fn live_update(w: &PolicyWorld) -> anyhow::Result<Vec<String>> {
    let phase = "live update";
    let mut f = Vec::new();
    let both = format!("{ALLOW_B_TO_A_80}---{UNRELATED_Z}");
    w.apply(&policies(ALLOW_B_TO_A_80))?;
    let o = w.tcp_outcome("x/b", "x/a", 80, LONG);
    check(
        &mut f,
        phase,
        o.allowed(),
        format!("x/b -> x/a:80 allowed: {o}"),
    );
    let o = w.tcp_outcome("x/c", "x/a", 80, SHORT);
    check(
        &mut f,
        phase,
        o == Outcome::TimedOut,
        format!("x/c -> x/a:80 dropped: {o}"),
    );
    let mut conn = w.open("x/b", "x/a", 80)?;
    check(
        &mut f,
        phase,
        echo(&mut conn, b"hello"),
        "echo on x/b -> x/a:80".into(),
    );

    let before = w.revision()?;
    let v = w.apply(&policies(&both))?;
    let after = v["revision"].as_u64().unwrap_or(0);
    check(
        &mut f,
        phase,
        after > before,
        format!("an unrelated policy (z/c) moves the revision: {before} -> {after}"),
    );
    let o = w.tcp_outcome("z/b", "z/c", 81, SHORT);
    check(
        &mut f,
        phase,
        o == Outcome::TimedOut,
        format!("the change is in force: z/b -> z/c:81 dropped: {o}"),
    );
    let o = w.tcp_outcome("z/a", "z/c", 81, LONG);
    check(
        &mut f,
        phase,
        o.allowed(),
        format!("z/a -> z/c:81 allowed: {o}"),
    );
    check(
        &mut f,
        phase,
        echo(&mut conn, b"still there"),
        "the established x/b -> x/a:80 connection survived the unrelated change".into(),
    );

    // Deny: allow-b-80 replaced by deny-all in x.
    w.apply(&policies(&format!("{DENY_X}---{UNRELATED_Z}")))?;
    let o = w.tcp_outcome("x/b", "x/a", 80, SHORT);
    check(
        &mut f,
        phase,
        o == Outcome::TimedOut,
        format!("new x/b -> x/a:80 connections are cut: {o}"),
    );
    check(
        &mut f,
        phase,
        !echo(&mut conn, b"now denied"),
        "the established x/b -> x/a:80 connection, now denied, is cut too (conntrack re-checks on a new revision)".into(),
    );
    Ok(f)
}

/// SIGKILL and restart of the agent: a denied pair never connects, an
/// allowed pair never fails, meanwhile.
fn agent_restart(w: &mut PolicyWorld, set: &ScenarioSet) -> anyhow::Result<Vec<String>> {
    let phase = "agent restart";
    let mut f = Vec::new();
    w.apply(&policies(&format!("{DENY_X}---{ALLOW_B_TO_A_80}")))?;
    let a = SocketAddr::new(IpAddr::V4(w.pod("x/a").ip), 80);
    let stop = Arc::new(AtomicBool::new(false));
    let denied_ok = Arc::new(AtomicU64::new(0));
    let denied_tries = Arc::new(AtomicU64::new(0));
    let allowed_fail = Arc::new(AtomicU64::new(0));
    let allowed_tries = Arc::new(AtomicU64::new(0));
    let denied = {
        let (stop, ok, tries) = (stop.clone(), denied_ok.clone(), denied_tries.clone());
        w.pod("x/c").ns.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&a, Duration::from_millis(150)).is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })?
    };
    let allowed = {
        let (stop, fail, tries) = (stop.clone(), allowed_fail.clone(), allowed_tries.clone());
        w.pod("x/b").ns.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        if !echo(&mut s, b"ping") {
                            fail.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })?
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = w.agent().pid();
    w.agent().sigkill()?;
    eprintln!("{phase}: agent {pid} killed (SIGKILL)");
    std::thread::sleep(Duration::from_millis(1000));
    let ready = w.start_agent()?;
    let v = w.sync()?;
    eprintln!(
        "{phase}: restarted, ready in {ready:?}; first sync: changed {}, revision {}",
        v["changed"], v["revision"]
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in [denied, allowed] {
        match t.join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
    let (dt, dok) = (
        denied_tries.load(Ordering::Relaxed),
        denied_ok.load(Ordering::Relaxed),
    );
    let (at, af) = (
        allowed_tries.load(Ordering::Relaxed),
        allowed_fail.load(Ordering::Relaxed),
    );
    check(
        &mut f,
        phase,
        dt >= 5 && dok == 0,
        format!("x/c -> x/a:80 (denied): {dt} tries, {dok} connected"),
    );
    check(
        &mut f,
        phase,
        at >= 5 && af == 0,
        format!("x/b -> x/a:80 (allowed): {at} tries, {af} failed"),
    );

    // And the restarted agent enforces a scenario as before.
    if let Some(s) = set.scenarios.iter().find(|s| s.name == "pod-and-namespace") {
        w.apply(&s.policies)?;
        let probes: Vec<(Protocol, u16)> = s.probes.iter().map(|p| (p.protocol, p.port)).collect();
        let measured = w.probe_matrices(&probes, PROBE_TIMEOUT)?;
        for (p, got) in s.probes.iter().zip(&measured) {
            let same = p.expected.differences(&got.matrix).is_empty();
            if !same {
                eprintln!("expected:\n{}measured:\n{}", p.expected, got.matrix);
            }
            check(
                &mut f,
                phase,
                same,
                format!(
                    "after the restart, scenario {} {}/{} matches",
                    s.name, p.protocol, p.port
                ),
            );
        }
    }
    Ok(f)
}

/// Runs a phase; a panic or error is one more failure, and the next phase
/// still runs (the world is dropped at the end either way).
fn phase(failures: &mut Vec<String>, name: &str, f: impl FnOnce() -> anyhow::Result<Vec<String>>) {
    let started = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(mut fs)) => failures.append(&mut fs),
        Ok(Err(e)) => {
            eprintln!("{name}: failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("{name}: panicked: {msg}");
            failures.push(format!("{name}: panicked: {msg}"));
        }
    }
    eprintln!("== {name}: {:?}", started.elapsed());
}

/// Every scenario, the live update and the agent restart, with the pods'
/// `hostRouting` set to `host_routing`: policy must be the same whether
/// `from_pod` forwards the packets itself or hands them to the stack.
fn every_scenario_with(host_routing: &'static str) {
    require_root("policy_matrix");
    let started = Instant::now();
    let set = scenarios::load(Path::new(SCENARIO_DIR)).expect("loading the scenarios");
    assert!(
        set.scenarios.len() >= 30,
        "{} scenarios",
        set.scenarios.len()
    );
    eprintln!("== hostRouting {host_routing}");
    let mut w = PolicyWorld::with_host_routing(
        &set,
        &Path::new(SCENARIO_DIR).join("cluster"),
        host_routing,
    )
    .expect("the world");
    eprintln!("== world: {:?}", started.elapsed());
    let mut failures = Vec::new();
    phase(&mut failures, "scenarios", || Ok(run_scenarios(&w, &set)));
    phase(&mut failures, "live update", || live_update(&w));
    phase(&mut failures, "agent restart", || {
        agent_restart(&mut w, &set)
    });
    let teardown = Instant::now();
    drop(w);
    eprintln!(
        "== teardown: {:?}; total {:?}",
        teardown.elapsed(),
        started.elapsed()
    );
    // The details were printed as they happened; the headlines here.
    let headlines: Vec<&str> = failures.iter().filter_map(|f| f.lines().next()).collect();
    assert!(
        failures.is_empty(),
        "{} failures with hostRouting {host_routing} (details above):\n{}",
        failures.len(),
        headlines.join("\n")
    );
}

#[test]
fn reachability_matrices_of_every_scenario() {
    every_scenario_with("ebpf");
}

#[test]
fn reachability_matrices_of_every_scenario_with_legacy_host_routing() {
    every_scenario_with("legacy");
}
