//! containerd's CRI plugin as a real runtime, called the way the kubelet
//! calls it: RunPodSandbox (ADD, with the pod's name, namespace and uid in
//! CNI_ARGS), the sandbox reachable at the IP PodSandboxStatus reports,
//! StopPodSandbox (DEL with the cached result) and RemovePodSandbox (a
//! second DEL, the netns already gone), then nothing left. The plugin under
//! test is a parameter: the reference `bridge` plugin, and the same network
//! with `"type": "sluice"` (and an agent in the node netns), where the
//! sandbox's datapath (TCX link pins on its host veth, `ENDPOINTS` entries)
//! is checked while it runs and must be gone, with the state records, after
//! the first DEL and still after the second.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    ping, require_root,
    runtime::{
        calls_of, check_clean,
        containerd::{Containerd, Pod},
        summarize, MachineLinks, Network, Sluice,
    },
    traffic::tcp_connect,
};

/// Runs the sandbox lifecycle on `network` and checks the plugin's calls
/// and the cleanup. With `sluice`, its agent runs in the node netns for the
/// scenario's length, and no attachment may be left in its state.
fn sandbox_lifecycle(network: Network, sluice: Option<&Sluice>) {
    let started = Instant::now();
    let before = MachineLinks::now().expect("listing the machine's links");
    let mut containerd = Containerd::start(network).expect("containerd world");
    let agent = sluice.map(|s| {
        s.start_agent(containerd.node())
            .expect("starting sluice-agent")
    });
    eprintln!("containerd ready after {:?}", started.elapsed());

    let pod = Pod::new("web-0", "sluice-test");
    let id = containerd.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let status = containerd.sandbox_status(&id).expect("PodSandboxStatus");
    assert!(status.ready, "sandbox not ready: {status:?}");
    let ip = status.ip.expect("the sandbox has an IP");
    let IpAddr::V4(ip4) = ip else {
        panic!("expected an IPv4 pod address, got {ip}");
    };
    assert!(
        containerd.network().subnet.contains(&ip4),
        "the sandbox got {ip}, outside {}",
        containerd.network().subnet
    );
    let netns = status.netns.clone().expect("the sandbox's netns path");
    assert!(netns.exists(), "{} does not exist", netns.display());

    // The pod answers from the node: ICMP echo, and a TCP SYN to a port
    // nobody listens on is refused (RST), not dropped.
    let replies = ping(containerd.node(), ip, 3, Duration::from_secs(2)).expect("ping");
    assert!(replies > 0, "no echo reply from the sandbox at {ip}");
    match tcp_connect(
        containerd.node(),
        SocketAddr::new(ip, 9),
        Duration::from_secs(3),
    ) {
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected connection refused from {ip}:9, got {other:?}"),
    }

    let calls = containerd.calls().expect("the CNI call log");
    let adds = calls_of(&calls, "ADD");
    assert_eq!(adds.len(), 1, "expected one ADD:\n{}", summarize(&calls));
    let add = adds[0];
    assert_eq!(add.rc, 0, "ADD failed:\n{}", summarize(&calls));
    assert_eq!(add.env_var("CNI_CONTAINERID"), Some(id.as_str()));
    assert_eq!(add.env_var("CNI_NETNS"), netns.to_str());
    assert_eq!(add.env_var("CNI_IFNAME"), Some("eth0"));
    let args = add.cni_args();
    assert_eq!(
        args.get("K8S_POD_NAME"),
        Some(&pod.name),
        "CNI_ARGS {args:?}"
    );
    assert_eq!(
        args.get("K8S_POD_NAMESPACE"),
        Some(&pod.namespace),
        "CNI_ARGS {args:?}"
    );
    assert_eq!(args.get("K8S_POD_UID"), Some(&pod.uid), "CNI_ARGS {args:?}");
    assert_eq!(
        args.get("K8S_POD_INFRA_CONTAINER_ID"),
        Some(&id),
        "CNI_ARGS {args:?}"
    );
    assert!(
        add.result_ips().iter().any(|a| a.addr() == ip),
        "ADD's result lacks {ip}: {}",
        add.stdout
    );
    if let Some(sluice) = sluice {
        sluice
            .check_attached(containerd.node(), containerd.network(), add)
            .expect("the sandbox's datapath");
    }

    containerd.stop_pod_sandbox(&id).expect("StopPodSandbox");
    assert!(
        !Path::new(&netns).exists(),
        "the netns outlived StopPodSandbox"
    );
    let calls = containerd.calls().expect("the CNI call log");
    let dels = calls_of(&calls, "DEL");
    assert_eq!(
        dels.len(),
        1,
        "expected one DEL at stop:\n{}",
        summarize(&calls)
    );
    assert_eq!(dels[0].rc, 0, "DEL at stop failed:\n{}", summarize(&calls));
    assert_eq!(
        dels[0].result_ips(),
        add.result_ips(),
        "DEL at stop has no prevResult matching ADD's result:\n{}",
        summarize(&calls)
    );
    if let Some(sluice) = sluice {
        sluice
            .check_detached()
            .expect("nothing of sluice left after the DEL at stop");
    }

    containerd
        .remove_pod_sandbox(&id)
        .expect("RemovePodSandbox");
    let calls = containerd.calls().expect("the CNI call log");
    let summary = summarize(&calls);
    let dels = calls_of(&calls, "DEL");
    assert_eq!(dels.len(), 2, "expected a second DEL at remove:\n{summary}");
    for del in &dels {
        assert_eq!(del.rc, 0, "a DEL failed:\n{summary}");
        assert_eq!(del.env_var("CNI_CONTAINERID"), Some(id.as_str()));
    }
    // The second DEL comes after the netns is gone: containerd passes an
    // empty CNI_NETNS, which the plugin must take as success.
    assert_eq!(
        dels[1].env_var("CNI_NETNS").unwrap_or_default(),
        "",
        "second DEL:\n{summary}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.command != "VERSION").count(),
        3,
        "expected exactly ADD, DEL, DEL:\n{summary}"
    );

    check_clean(
        containerd.network(),
        &calls,
        containerd.node(),
        containerd.ipam_dir(),
        &before,
    )
    .expect("nothing left after RemovePodSandbox");
    if let Some(sluice) = sluice {
        sluice
            .check_detached()
            .expect("nothing of sluice left after the second DEL");
    }
    drop(agent);
    drop(containerd);
    let added = before.added().expect("listing the machine's links");
    assert!(
        added.is_empty(),
        "links left in the machine's netns: {added:?}"
    );
    eprintln!(
        "containerd scenario took {:?}; CNI calls:\n{}",
        started.elapsed(),
        summarize(&calls)
    );
}

#[test]
fn containerd_cri_sandbox_lifecycle_over_reference_bridge() {
    require_root("containerd_cri_sandbox_lifecycle_over_reference_bridge");
    sandbox_lifecycle(Network::reference_bridge(62), None);
}

#[test]
fn containerd_cri_sandbox_lifecycle_over_sluice() {
    require_root("containerd_cri_sandbox_lifecycle_over_sluice");
    let sluice = Sluice::new().expect("sluice pin and state dirs");
    let network = sluice.network(72).expect("the sluice network");
    sandbox_lifecycle(network, Some(&sluice));
}
