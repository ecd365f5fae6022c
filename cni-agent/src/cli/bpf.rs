//! `sluicectl bpf maps|progs|links`: the pinned objects as the kernel sees them.

use aya::{
    maps::{MapData, MapInfo},
    programs::ProgramInfo,
};
use clap::Subcommand;
use cni_ebpf_common::maps::{
    BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF,
    MAP_SPECS,
};
use serde::Serialize;

use super::output::{json, table, Format};
use crate::{bpffs::PinLayout, loader::shape_matches, syscall::pinned_xdp_link_state};

/// `bpf` verbs.
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// Pinned maps: type, key/value size, capacity, entries, shape check.
    Maps,
    /// Pinned programs: id, tag, type.
    Progs,
    /// Pinned links: what runs where.
    Links,
}

#[derive(Serialize)]
struct MapRow {
    name: &'static str,
    id: u32,
    map_type: String,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    /// Keys present (arrays: every slot exists, so max_entries; none for
    /// ring buffers and for pins with an unexpected layout).
    entries: Option<u64>,
    /// Whether the pin has the layout this build expects.
    layout_ok: bool,
}

fn type_name(t: u32) -> String {
    match t {
        BPF_MAP_TYPE_HASH => "hash".into(),
        BPF_MAP_TYPE_PERCPU_ARRAY => "percpu_array".into(),
        BPF_MAP_TYPE_LPM_TRIE => "lpm_trie".into(),
        BPF_MAP_TYPE_RINGBUF => "ringbuf".into(),
        other => format!("type {other}"),
    }
}

fn count_keys(layout: &PinLayout, name: &str) -> anyhow::Result<Option<u64>> {
    use crate::maps::open_pinned;
    use aya::maps::{lpm_trie::LpmTrie, HashMap};
    use cni_ebpf_common::{
        maps::{ENDPOINTS, PREFILTER_CIDR4, PREFILTER_CIDR6, PREFILTER_PROTO},
        prefilter::{Cidr4Addr, Cidr6Addr},
        EndpointInfo, EndpointKey, ProtoKey, RuleValue,
    };
    let count = match name {
        PREFILTER_PROTO => {
            let m: HashMap<MapData, ProtoKey, RuleValue> = open_pinned(layout, name)?;
            m.keys().count()
        }
        PREFILTER_CIDR4 => {
            let m: LpmTrie<MapData, Cidr4Addr, RuleValue> = open_pinned(layout, name)?;
            m.keys().count()
        }
        PREFILTER_CIDR6 => {
            let m: LpmTrie<MapData, Cidr6Addr, RuleValue> = open_pinned(layout, name)?;
            m.keys().count()
        }
        ENDPOINTS => {
            let m: HashMap<MapData, EndpointKey, EndpointInfo> = open_pinned(layout, name)?;
            m.keys().count()
        }
        _ => return Ok(None),
    };
    Ok(Some(count as u64))
}

fn maps(layout: &PinLayout) -> anyhow::Result<Vec<MapRow>> {
    let mut rows = Vec::new();
    for spec in &MAP_SPECS {
        let path = layout.map(spec.name);
        let info = MapInfo::from_pin(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (is sluice-agent started, and --bpffs-dir right?)",
                path.display()
            )
        })?;
        let map_type = info.map_type().map(|t| t as u32).unwrap_or(0);
        let layout_ok = shape_matches(&info, spec);
        let entries = if !layout_ok {
            None
        } else if map_type == BPF_MAP_TYPE_PERCPU_ARRAY {
            Some(info.max_entries().into())
        } else {
            count_keys(layout, spec.name)?
        };
        rows.push(MapRow {
            name: spec.name,
            id: info.id(),
            map_type: type_name(map_type),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            entries,
            layout_ok,
        });
    }
    Ok(rows)
}

#[derive(Serialize)]
struct ProgRow {
    name: String,
    id: u32,
    tag: String,
    program_type: String,
}

fn progs(layout: &PinLayout) -> anyhow::Result<Vec<ProgRow>> {
    let mut rows = Vec::new();
    let dir = layout.progs_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (is sluice-agent started?)", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let info = ProgramInfo::from_pin(dir.join(&name))?;
        rows.push(ProgRow {
            name,
            id: info.id(),
            tag: format!("{:016x}", info.tag()),
            program_type: format!("{:?}", info.program_type()),
        });
    }
    Ok(rows)
}

#[derive(Serialize)]
struct LinkRow {
    pin: String,
    link_id: u32,
    prog_id: u32,
    ifindex: u32,
    live: bool,
}

fn links(layout: &PinLayout) -> anyhow::Result<Vec<LinkRow>> {
    let mut rows = Vec::new();
    for (_, path) in crate::attach::pinned_xdp_links(layout)? {
        let state = pinned_xdp_link_state(&path)?;
        rows.push(LinkRow {
            pin: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            link_id: state.link_id,
            prog_id: state.prog_id,
            ifindex: state.ifindex,
            live: state.ifindex != 0,
        });
    }
    Ok(rows)
}

/// Runs a `bpf` verb.
pub fn run(layout: &PinLayout, cmd: &BpfCommand, format: Format) -> anyhow::Result<String> {
    match cmd {
        BpfCommand::Maps => {
            let rows = maps(layout)?;
            if format == Format::Json {
                return json(&rows);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.to_owned(),
                        r.id.to_string(),
                        r.map_type.clone(),
                        r.key_size.to_string(),
                        r.value_size.to_string(),
                        r.max_entries.to_string(),
                        r.entries.map_or("-".into(), |n| n.to_string()),
                        if r.layout_ok {
                            "ok".into()
                        } else {
                            "MISMATCH".into()
                        },
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "NAME", "ID", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "LAYOUT",
                ],
                &cells,
            ))
        }
        BpfCommand::Progs => {
            let rows = progs(layout)?;
            if format == Format::Json {
                return json(&rows);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.id.to_string(),
                        r.tag.clone(),
                        r.program_type.clone(),
                    ]
                })
                .collect();
            Ok(table(&["NAME", "ID", "TAG", "TYPE"], &cells))
        }
        BpfCommand::Links => {
            let rows = links(layout)?;
            if format == Format::Json {
                return json(&rows);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.pin.clone(),
                        r.link_id.to_string(),
                        r.prog_id.to_string(),
                        r.ifindex.to_string(),
                        if r.live {
                            "live".into()
                        } else {
                            "defunct".into()
                        },
                    ]
                })
                .collect();
            Ok(table(&["PIN", "LINK", "PROG", "IFINDEX", "STATE"], &cells))
        }
    }
}
