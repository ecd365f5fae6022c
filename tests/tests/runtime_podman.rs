//! podman with its CNI backend as a real runtime: two busybox containers on
//! one network, one serving HTTP, the other fetching from it, then nothing
//! left once both are gone. The plugin under test is a parameter: the
//! reference `bridge` plugin, and the same network with `"type": "sluice"`
//! (and an agent in the node netns), where the server's datapath (TCX
//! link pins on its host veth, `ENDPOINTS` entries) is checked while it
//! runs and must be gone, with the state records, afterwards.

use std::time::{Duration, Instant};

use tests::{
    require_root,
    runtime::{calls_of, check_clean, podman::Podman, summarize, MachineLinks, Network, Sluice},
};

/// What the server container serves.
const CONTENT: &str = "hello from a sluice network";

/// Runs the two-container scenario on `network` and checks the plugin's
/// calls and the cleanup. With `sluice`, its agent runs in the node netns
/// for the scenario's length, and no attachment may be left in its state.
fn two_containers_talk(network: Network, sluice: Option<&Sluice>) {
    let started = Instant::now();
    let before = MachineLinks::now().expect("listing the machine's links");
    let mut podman = Podman::new(network).expect("podman world");
    let agent = sluice.map(|s| s.start_agent(podman.node()).expect("starting sluice-agent"));

    // The server: busybox httpd on 8080, in the foreground as PID 1.
    let script = format!(
        "mkdir -p /www && echo '{CONTENT}' > /www/index.html && exec httpd -f -p 8080 -h /www"
    );
    podman
        .run_detached("server", &script)
        .expect("starting the server container");
    let server_ip = podman.ip_of("server").expect("the server's address");
    assert!(
        podman.network().subnet.contains(&server_ip),
        "the server got {server_ip}, outside {}",
        podman.network().subnet
    );
    if let Some(sluice) = sluice {
        let calls = podman.calls().expect("the CNI call log");
        let add = calls_of(&calls, "ADD")
            .into_iter()
            .find(|a| a.cni_args().get("K8S_POD_NAME").map(String::as_str) == Some("server"))
            .unwrap_or_else(|| panic!("no ADD for the server:\n{}", summarize(&calls)));
        sluice
            .check_attached(podman.node(), podman.network(), add)
            .expect("the server's datapath");
    }

    // The client: fetches from the server's address (retrying while httpd
    // starts), in the foreground with --rm. `timeout 3 wget`, not `wget -T`:
    // Debian 12's busybox 1.35 segfaults on `wget -T`.
    let client = format!(
        "for i in $(seq 100); do \
           if timeout 3 wget -q -O - http://{server_ip}:8080/index.html; then exit 0; fi; \
           sleep 0.1; \
         done; echo 'no answer from {server_ip}' >&2; ip addr >&2; ip route >&2; exit 1"
    );
    let fetched = podman
        .run(&client, Duration::from_secs(30))
        .unwrap_or_else(|err| {
            panic!(
                "client container: {err:#}\nCNI calls:\n{}",
                podman.plugins().summary()
            )
        });
    assert_eq!(fetched.trim(), CONTENT, "the client fetched something else");

    podman
        .stop("server", Duration::from_secs(20))
        .expect("stopping the server container");

    let calls = podman.calls().expect("the CNI call log");
    let summary = summarize(&calls);
    // podman asks VERSION before each ADD and DEL; one ADD and one DEL per
    // container, all successful.
    for call in &calls {
        assert_eq!(call.rc, 0, "a CNI call failed:\n{summary}");
    }
    assert!(
        !calls_of(&calls, "VERSION").is_empty(),
        "podman never asked VERSION:\n{summary}"
    );
    let adds = calls_of(&calls, "ADD");
    let dels = calls_of(&calls, "DEL");
    assert_eq!(adds.len(), 2, "expected 2 ADDs:\n{summary}");
    assert_eq!(dels.len(), 2, "expected 2 DELs:\n{summary}");
    let server_add = adds
        .iter()
        .find(|a| a.cni_args().get("K8S_POD_NAME").map(String::as_str) == Some("server"))
        .unwrap_or_else(|| panic!("no ADD with K8S_POD_NAME=server:\n{summary}"));
    assert!(
        server_add
            .result_ips()
            .iter()
            .any(|ip| ip.addr() == std::net::IpAddr::V4(server_ip)),
        "the server's ADD result lacks {server_ip}:\n{}",
        server_add.stdout
    );
    assert_eq!(server_add.env_var("CNI_IFNAME"), Some("eth0"));
    for add in &adds {
        let id = add.env_var("CNI_CONTAINERID").expect("CNI_CONTAINERID");
        let del = dels
            .iter()
            .find(|d| d.env_var("CNI_CONTAINERID") == Some(id))
            .unwrap_or_else(|| panic!("no DEL for container {id}:\n{summary}"));
        // podman passes the cached ADD result to DEL.
        assert_eq!(
            del.result_ips(),
            add.result_ips(),
            "DEL's prevResult differs from ADD's result"
        );
        assert_eq!(del.env_var("CNI_NETNS"), add.env_var("CNI_NETNS"));
    }

    check_clean(
        podman.network(),
        &calls,
        podman.node(),
        podman.ipam_dir(),
        &before,
    )
    .expect("nothing left after --rm");
    if let Some(sluice) = sluice {
        sluice
            .check_detached()
            .expect("nothing of sluice left after DEL");
    }
    drop(agent);
    drop(podman);
    let added = before.added().expect("listing the machine's links");
    assert!(
        added.is_empty(),
        "links left in the machine's netns: {added:?}"
    );
    eprintln!(
        "podman scenario took {:?}; CNI calls:\n{}",
        started.elapsed(),
        summarize(&calls)
    );
}

#[test]
fn podman_busybox_containers_reach_each_other_over_reference_bridge() {
    require_root("podman_busybox_containers_reach_each_other_over_reference_bridge");
    two_containers_talk(Network::reference_bridge(61), None);
}

#[test]
fn podman_busybox_containers_reach_each_other_over_sluice() {
    require_root("podman_busybox_containers_reach_each_other_over_sluice");
    let sluice = Sluice::new().expect("sluice pin and state dirs");
    let network = sluice.network(71).expect("the sluice network");
    two_containers_talk(network, Some(&sluice));
}
