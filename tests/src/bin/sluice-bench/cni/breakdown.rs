//! The building blocks of an ADD and a DEL, each timed alone, so the totals
//! can be explained.

use std::{os::fd::AsRawFd as _, path::Path, time::Instant};

use anyhow::Context as _;
use aya::programs::{
    links::LinkOrder,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    SchedClassifier, TcAttachType,
};
use cni_ebpf_common::maps::{TC_FILTER_HANDLE, TC_FILTER_PRIORITY};
use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::link::{InfoData, InfoVeth},
    LinkMessageBuilder, LinkUnspec, LinkVeth,
};
use serde_json::json;

use super::{invoke, Plugin, Side, World, CNI_VERSION, REFERENCE_DIR, SUBNET};
use crate::stats::Summary;

/// The host end of the veth the kernel steps are timed on (in sluice's
/// node namespace, the bench's own).
const HOST: &str = "bench-h0";

/// One step of the breakdown.
pub(super) struct Step {
    pub(super) name: &'static str,
    pub(super) note: &'static str,
    pub(super) summary: Summary,
}

/// The building blocks of an ADD and a DEL, each timed on its own, so the
/// totals can be explained: process start, the IPAM exec both plugins do,
/// and the kernel work of the plumbing with and without sluice's programs,
/// attached either way (`tcAttach`: cls_bpf filters, the default, or TCX).
pub(super) fn breakdown(world: &World, n: usize) -> anyhow::Result<Vec<Step>> {
    let bridge = world.side(Plugin::Bridge);
    let sluice = world.side(Plugin::Sluice);
    let version_in = format!("{{\"cniVersion\":\"{CNI_VERSION}\"}}").into_bytes();
    let host_local = Path::new(REFERENCE_DIR).join("host-local");
    let ipam_conf = json!({
        "cniVersion": CNI_VERSION,
        "name": "sluice-bench-ipam",
        "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": bridge.dir.join("ipam-breakdown")},
    })
    .to_string()
    .into_bytes();
    let pod = bridge.pods[0].path();
    let [spawn_sluice, spawn_bridge, ipam_add, ipam_del] = bridge.node.run(|| {
        let mut out: [Vec<f64>; 4] = Default::default();
        for i in 0..n {
            for (slot, side) in [(0, sluice), (1, bridge)] {
                let (t, _) = invoke(&side.binary, "", "VERSION", "v", pod, &version_in)?;
                out[slot].push(t);
            }
            let cid = format!("bench-ipam-{i:05}");
            let (t, _) = invoke(&host_local, REFERENCE_DIR, "ADD", &cid, pod, &ipam_conf)?;
            out[2].push(t);
            let (t, _) = invoke(&host_local, REFERENCE_DIR, "DEL", &cid, pod, &ipam_conf)?;
            out[3].push(t);
        }
        Ok(out)
    })?;
    crate::check_interrupted()?;
    let [create, attach_tc, del_tc, attach_tcx, del_tcx, del_plain] =
        kernel_steps(world, sluice, n)?;
    let summary = |v: &[f64]| Summary::of(v).expect("n > 0 samples");
    Ok(vec![
        Step {
            name: "process start + exit, sluice (VERSION)",
            note: "Rust binary, no work",
            summary: summary(&spawn_sluice),
        },
        Step {
            name: "process start + exit, bridge (VERSION)",
            note: "Go binary, no work",
            summary: summary(&spawn_bridge),
        },
        Step {
            name: "host-local ADD (exec)",
            note: "both plugins exec it on ADD",
            summary: summary(&ipam_add),
        },
        Step {
            name: "host-local DEL (exec)",
            note: "both plugins exec it on DEL",
            summary: summary(&ipam_del),
        },
        Step {
            name: "veth pair create (one netlink request)",
            note: "both plugins",
            summary: summary(&create),
        },
        Step {
            name: "tc attach from_pod + to_pod (clsact + two cls_bpf filters)",
            note: "sluice's ADD (`tcAttach: tc`, the default)",
            summary: summary(&attach_tc),
        },
        Step {
            name: "veth delete, tc filters attached",
            note: "sluice's DEL (`tcAttach: tc`)",
            summary: summary(&del_tc),
        },
        Step {
            name: "TCX attach from_pod + to_pod (two BPF_LINK_CREATE)",
            note: "sluice's ADD with `tcAttach: tcx`",
            summary: summary(&attach_tcx),
        },
        Step {
            name: "veth delete, TCX programs attached",
            note: "sluice's DEL with `tcAttach: tcx`",
            summary: summary(&del_tcx),
        },
        Step {
            name: "veth delete, no programs",
            note: "the reference's DEL",
            summary: summary(&del_plain),
        },
    ])
}

/// Times the kernel side of the plumbing in sluice's node namespace: a
/// veth pair created with its peer in a pod namespace, sluice's two pinned
/// programs attached as the plugin attaches them (cls_bpf filters in a
/// `clsact` qdisc, and TCX links), and the veth deleted with either and
/// without programs.
fn kernel_steps(world: &World, side: &Side, n: usize) -> anyhow::Result<[Vec<f64>; 6]> {
    const PEER: &str = "bench-p0";
    let pod_fd = side.pods[0].fd().as_raw_fd();
    let progs = world.bpffs.path().join("progs");
    side.node.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        rt.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().context("opening an rtnetlink socket")?;
            let connection = tokio::spawn(connection);
            let create = async || -> anyhow::Result<f64> {
                let peer = LinkMessageBuilder::<LinkUnspec>::new()
                    .name(PEER.to_owned())
                    .setns_by_fd(pod_fd)
                    .build();
                let message = LinkVeth::new(HOST, PEER)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                let started = Instant::now();
                handle
                    .link()
                    .add(message)
                    .execute()
                    .await
                    .context("creating a veth pair")?;
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            };
            let delete = async || -> anyhow::Result<f64> {
                let link = handle
                    .link()
                    .get()
                    .match_name(HOST.to_owned())
                    .execute()
                    .try_next()
                    .await?
                    .with_context(|| format!("{HOST} is gone"))?;
                let started = Instant::now();
                handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .context("deleting the veth")?;
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            };
            let mut from_pod = SchedClassifier::from_pin(progs.join("from_pod"))
                .context("opening the pinned from_pod")?;
            let mut to_pod = SchedClassifier::from_pin(progs.join("to_pod"))
                .context("opening the pinned to_pod")?;
            let mut out: [Vec<f64>; 6] = Default::default();
            for _ in 0..n {
                crate::check_interrupted()?;
                out[0].push(create().await?);
                let started = Instant::now();
                tc::qdisc_add_clsact(HOST).context("adding clsact")?;
                let filters = attach_both(&mut from_pod, &mut to_pod, || {
                    TcAttachOptions::Netlink(NlOptions {
                        priority: TC_FILTER_PRIORITY,
                        handle: TcHandle::from(TC_FILTER_HANDLE),
                        ..Default::default()
                    })
                })?;
                out[1].push(started.elapsed().as_secs_f64() * 1000.0);
                out[2].push(delete().await?);
                // The filters went with the veth; dropping aya's handles of
                // them (a detach that finds nothing) costs nothing.
                drop(filters);
                create().await?;
                let started = Instant::now();
                let links = attach_both(&mut from_pod, &mut to_pod, || {
                    TcAttachOptions::TcxOrder(LinkOrder::default())
                })?;
                out[3].push(started.elapsed().as_secs_f64() * 1000.0);
                // As the plugin's DEL: the veth goes first, then the links
                // (defunct by then, so releasing them costs nothing).
                out[4].push(delete().await?);
                drop(links);
                create().await?;
                out[5].push(delete().await?);
            }
            connection.abort();
            Ok(out)
        })
    })
}

/// Attaches `from_pod` to the ingress and `to_pod` to the egress of the
/// bench's veth, each with `options()`; returns aya's handles of the
/// attachments (dropping one detaches it).
fn attach_both(
    from_pod: &mut SchedClassifier,
    to_pod: &mut SchedClassifier,
    options: impl Fn() -> TcAttachOptions,
) -> anyhow::Result<Vec<SchedClassifierLink>> {
    let mut links = Vec::new();
    for (prog, direction) in [
        (from_pod, TcAttachType::Ingress),
        (to_pod, TcAttachType::Egress),
    ] {
        let id = prog
            .attach_with_options(HOST, direction, options())
            .with_context(|| format!("{direction:?} attach"))?;
        links.push(prog.take_link(id)?);
    }
    Ok(links)
}
