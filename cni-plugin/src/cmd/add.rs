//! ADD: connect a container to the network.
//!
//! Steps, each undone when a later one fails (STYLE point 5), so a failed
//! ADD leaves no veth, IP reservation, masquerade rule, `ENDPOINTS` entry,
//! link pin or state record behind:
//!
//! 1. Checks without side effects: an `ipam` section; the netns exists
//!    (code 3 when it does not: the spec's "container unknown", which tells
//!    the runtime there is nothing to clean up); no state record for this
//!    attachment yet; the agent's programs are pinned (code 11, "try again
//!    later", before IPAM is asked for anything).
//! 2. MTU (`mtu`, else the uplink's). In bridge mode the bridge port
//!    first: the bridge, the veth enslaved, the container's interface up
//!    without addresses (undo: delete the veth), as the reference bridge
//!    plugin does, because the `dhcp` IPAM runs DHCP on that interface.
//!    Then IPAM: `sluice-ipam` in process, any other type by exec (which
//!    reads `runtimeConfig.ips`/`ipRanges`, `args.cni.ips` and `CNI_ARGS`
//!    `IP=` itself). Undo: IPAM DEL.
//! 3. The plumbing of the mode (routed by default, or the rest of bridge
//!    mode): veth, addresses, routes, the pinned programs attached,
//!    `ENDPOINTS` entries. Undo: the DEL teardown.
//! 4. `ipMasq`: masquerade rules. Undo: remove them.
//! 5. The state record. Undo: remove it.
//! 6. The agent is told on `agentSocket`: best effort, or with
//!    `waitForPolicy` a required acknowledgement within `policyTimeoutMs`
//!    (code 11 and everything undone otherwise). Undo: a best-effort `del`.
//!
//! A `prevResult` on ADD (Sluice configured after another plugin in a
//! chain) is ignored, as the reference bridge plugin ignores it: Sluice
//! creates the interface and reports what it built.
//!
//! DNS in the result: the config's `dns` when it sets anything, else what
//! IPAM returned (the bridge plugin's rule).

use std::path::Path;

use crate::{
    bridge,
    config::Mode,
    error::{CniError, CniResult, Code},
    ipam, masq, mtu,
    netns::NetnsHandle,
    routed,
    skel::Request,
    state::{self, AttachMode, Attachment},
    timing::StepTimer,
    types::CniOutput,
    veth::{self, PodSpec, Teardown},
};

use super::{errs, ipam_env, notify, Undo};

/// ADD.
pub fn run(req: &Request) -> CniResult<CniOutput> {
    let mut timer = StepTimer::start("ADD");
    let conf = &req.config;
    if req.prev_result.is_some() {
        tracing::debug!(
            "ignoring prevResult on ADD: sluice creates the interface (as the bridge plugin does)"
        );
    }
    if conf.ipam.is_none() {
        return Err(CniError::config("missing \"ipam\"").with_details(
            "sluice needs an ipam section (e.g. {\"type\": \"sluice-ipam\", \"subnet\": ...}) to address the pod",
        ));
    }
    let netns_path = req
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "required for ADD"))?;
    let netns = NetnsHandle::open(netns_path)?;
    if let Some(old) = state::read(&conf.state_dir, &req.container_id, &req.ifname)? {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!(
                "container {} already has an attachment {} in network {}",
                req.container_id, req.ifname, old.network
            ),
        )
        .with_details(format!(
            "state record in {} (host veth {}); DEL it first",
            conf.state_dir.display(),
            old.host_veth
        )));
    }
    crate::attach::check_pinned(&conf.bpffs_dir)?;
    timer.step("checks");

    let env = ipam_env(req);
    let mut undo = Undo::new();
    let mtu = mtu::resolve(conf.mtu)?;
    timer.step("mtu");
    let mut spec = PodSpec {
        container_id: &req.container_id,
        ifname: &req.ifname,
        netns: &netns,
        mtu,
        container_mac: conf.requested_mac(&req.args).map(|m| m.0),
        ips: &[],
        routes: &[],
        bpffs_dir: Some(&conf.bpffs_dir),
        endpoint_flags: conf.endpoint_flags(),
        tc_attach: conf.tc_attach,
    };

    // 2a. Bridge mode: the bridge port and the container's interface
    // first, as the reference bridge plugin does, because the `dhcp` IPAM
    // runs DHCP on that interface. Undo: delete the veth (after the IPAM
    // release, so the `dhcp` daemon can still send its DHCPRELEASE).
    let port = match &conf.mode {
        Mode::Routed => None,
        Mode::Bridge(b) => {
            let port = bridge::create_port(&spec, &super::bridge_options(b))?;
            let host = port.host.name.clone();
            undo.push("the veth", move || errs(veth::delete(&host)));
            Some(port)
        }
    };
    timer.step("bridge port");

    // 2b. IPAM.
    let ipam_out = ipam::add(&req.stdin, &env)?;
    timer.step("ipam");
    undo.push("the IP reservation", || errs(ipam::del(&req.stdin, &env)));
    tracing::debug!(
        "IPAM gave {:?}",
        ipam_out.ips.iter().map(|i| i.address).collect::<Vec<_>>()
    );

    // 3. Plumbing.
    spec.ips = &ipam_out.ips;
    spec.routes = &ipam_out.routes;
    let (plumbed, attach_mode, bridge_name) = match (&conf.mode, &port) {
        (Mode::Bridge(b), Some(port)) => (
            bridge::configure(&spec, &super::bridge_options(b), port)?,
            AttachMode::Bridge,
            Some(b.name.clone()),
        ),
        // Bridge mode always made its port above.
        (Mode::Routed, _) | (Mode::Bridge(_), None) => {
            (routed::add(&spec)?, AttachMode::Routed, None)
        }
    };
    let host_veth = plumbed.host.name.clone();
    let endpoint_id = plumbed.endpoint_id;
    undo.push("the veth and datapath", {
        let host_veth = host_veth.clone();
        move || {
            veth::teardown(&Teardown {
                container_id: &req.container_id,
                ifname: &req.ifname,
                host_veth: Some(&host_veth),
                netns: None,
                bpffs_dir: Some(&conf.bpffs_dir),
            })
        }
    });
    timer.step("plumbing");
    tracing::debug!("plumbed {host_veth} ({})", conf.mode.as_str());

    // 4. Masquerade.
    if conf.ip_masq {
        let entries: Vec<masq::MasqEntry> = ipam_out
            .ips
            .iter()
            .map(|ip| masq::MasqEntry { addr: ip.address })
            .collect();
        masq::add(&conf.name, &req.container_id, endpoint_id, &entries)?;
        undo.push("the masquerade rules", move || {
            errs(masq::remove(endpoint_id))
        });
    }

    // 5. State record.
    let addresses: Vec<ipnet::IpNet> = ipam_out.ips.iter().map(|ip| ip.address).collect();
    let record = Attachment {
        version: state::STATE_VERSION,
        network: conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        netns: netns_path.display().to_string(),
        endpoint_id,
        host_veth: host_veth.clone(),
        host_ifindex: plumbed.host.index,
        container_mac: plumbed.container.mac_string(),
        mode: attach_mode,
        bridge: bridge_name,
        addresses: addresses.clone(),
        ip_masq: conf.ip_masq,
        host_routing: Some(conf.host_routing.as_str().to_owned()),
        tc_attach: Some(conf.tc_attach.as_str().to_owned()),
        pod_namespace: req.args.k8s_pod_namespace.clone(),
        pod_name: req.args.k8s_pod_name.clone(),
        pod_uid: req.args.k8s_pod_uid.clone(),
        bpffs_dir: conf.bpffs_dir.display().to_string(),
        created_at: 0,
        updated_at: 0,
    };
    timer.step("masquerade");
    state::write(&conf.state_dir, &record)?;
    timer.step("state record");
    undo.push("the state record", || {
        errs(state::remove(
            &conf.state_dir,
            &req.container_id,
            &req.ifname,
        ))
    });

    // 6. The agent.
    let mut note = notify::Request::new(
        notify::Op::Add,
        &conf.name,
        &req.container_id,
        &req.ifname,
        endpoint_id,
    );
    note.pod_namespace = req.args.k8s_pod_namespace.clone();
    note.pod_name = req.args.k8s_pod_name.clone();
    note.addresses = addresses;
    tell_agent(
        &conf.agent_socket,
        note,
        conf.wait_for_policy,
        conf.policy_timeout,
        &mut undo,
    )?;

    timer.step("agent");
    let mut out = plumbed.output;
    out.dns = if conf.dns.is_empty() {
        ipam_out.dns
    } else {
        conf.dns.clone()
    };
    undo.commit();
    tracing::info!(
        "added {} ({}) to network {} on {host_veth}",
        req.container_id,
        req.ifname,
        conf.name
    );
    Ok(out)
}

/// Step 6: best effort, or (`wait`) a required acknowledgement. Once the
/// request may have reached the agent, the undo stack gets a best-effort
/// `del`, so an agent that programmed the endpoint after the plugin gave up
/// forgets it again.
fn tell_agent<'a>(
    socket: &'a Path,
    mut note: notify::Request,
    wait: bool,
    timeout: std::time::Duration,
    undo: &mut Undo<'a>,
) -> CniResult<()> {
    if !wait {
        notify::send_best_effort(socket, &note);
        return Ok(());
    }
    note.wait = true;
    let result = notify::send(socket, &note, timeout);
    if !matches!(&result, Err(e) if e.is_not_listening()) {
        let mut del = note.clone();
        del.op = notify::Op::Del;
        del.addresses.clear();
        undo.push("the agent notification", move || {
            notify::send_best_effort(socket, &del);
            Vec::new()
        });
    }
    result.map_err(|e| {
        CniError::new(
            Code::TryAgainLater,
            "the agent did not confirm the pod's network policy; try again later",
        )
        .with_details(format!(
            "waitForPolicy is on (policyTimeoutMs {}): {e}",
            timeout.as_millis()
        ))
    })
}
