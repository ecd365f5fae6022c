//! Loading the datapath: check the pinned maps' shapes, load the object with
//! every map pinned by name, and pin the programs, adopting pins an earlier
//! agent left when they are the same code.

use std::path::Path;

use anyhow::{bail, Context as _};
use aya::{
    maps::MapInfo,
    programs::{ProgramInfo, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use cni_ebpf_common::maps::{
    MapSpec, MAP_SPECS, PROG_FROM_POD, PROG_FROM_UPLINK, PROG_TO_POD, PROG_XDP_PREFILTER,
};

use crate::bpffs::PinLayout;

/// What happened to one pinned map before loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapPinCheck {
    /// No pin yet: the loader creates and pins the map.
    Created,
    /// The pin has the expected shape and is reused with its contents.
    Reused,
    /// The pin had another shape (an older layout): it was removed and the
    /// map is created afresh. Its entries are not carried over.
    Replaced {
        /// What the old pin looked like.
        found: String,
    },
}

/// What happened to one program pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgPin {
    /// No pin yet: pinned the freshly loaded program.
    Pinned,
    /// The pin holds the same code (same tag): kept, so links and the
    /// plugin's attachments keep running it without any swap.
    Adopted,
    /// The pin held other code: replaced atomically (pin + rename).
    Replaced,
}

/// Outcome of [`load`].
pub struct Loaded {
    /// The loaded object; its maps are the pinned ones.
    pub ebpf: Ebpf,
    /// Per map, what the shape check did.
    pub maps: Vec<(&'static str, MapPinCheck)>,
    /// Per program, whether its pin was adopted.
    pub progs: Vec<(&'static str, ProgPin)>,
}

fn describe(info: &MapInfo) -> String {
    format!(
        "type {} key {} value {} max_entries {}",
        info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        info.key_size(),
        info.value_size(),
        info.max_entries()
    )
}

/// Whether the pinned map `info` has the shape `spec` wants.
pub fn shape_matches(info: &MapInfo, spec: &MapSpec) -> bool {
    info.map_type().map(|t| t as u32).ok() == Some(spec.map_type)
        && info.key_size() == spec.key_size
        && info.value_size() == spec.value_size
        && info.max_entries() == spec.max_entries
}

/// Compares every pinned map against [`MAP_SPECS`] and removes the pins
/// whose shape changed, so the loader creates them anew instead of reusing
/// an old layout (aya reuses a pin by name without comparing).
pub fn check_map_pins(layout: &PinLayout) -> anyhow::Result<Vec<(&'static str, MapPinCheck)>> {
    let mut checks = Vec::new();
    for spec in &MAP_SPECS {
        let path = layout.map(spec.name);
        if !path.exists() {
            checks.push((spec.name, MapPinCheck::Created));
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        if shape_matches(&info, spec) {
            checks.push((spec.name, MapPinCheck::Reused));
        } else {
            let found = describe(&info);
            tracing::warn!(
                map = spec.name,
                found = %found,
                expected = ?spec,
                "pinned map has another layout; replacing it (its entries are dropped)"
            );
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            checks.push((spec.name, MapPinCheck::Replaced { found }));
        }
    }
    Ok(checks)
}

/// Loads the datapath with every map pinned under `layout`, and pins the
/// programs. `log_level` is aya-log's level in the kernel (0 = off,
/// 1 = error .. 5 = trace): records above it are never written.
pub fn load(layout: &PinLayout, log_level: u8) -> anyhow::Result<Loaded> {
    layout.create_dirs()?;
    let maps = check_map_pins(layout)?;
    let map_paths: Vec<_> = MAP_SPECS
        .iter()
        .map(|spec| (spec.name, layout.map(spec.name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.override_global("AYA_LOG_LEVEL", &log_level, false);
    let mut ebpf = loader
        .load(crate::EBPF_OBJECT)
        .context("loading the eBPF object")?;

    let mut progs = Vec::new();
    {
        let xdp: &mut Xdp = program_mut(&mut ebpf, PROG_XDP_PREFILTER)?.try_into()?;
        xdp.load()
            .with_context(|| format!("verifying {PROG_XDP_PREFILTER}"))?;
        let info = xdp.info()?;
        progs.push((
            PROG_XDP_PREFILTER,
            pin_program(layout, PROG_XDP_PREFILTER, &info, |p| xdp.pin(p))?,
        ));
    }
    for name in [PROG_FROM_POD, PROG_TO_POD, PROG_FROM_UPLINK] {
        let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("verifying {name}"))?;
        let info = prog.info()?;
        progs.push((name, pin_program(layout, name, &info, |p| prog.pin(p))?));
    }
    Ok(Loaded { ebpf, maps, progs })
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Pins a loaded program unless the pin already holds the same code.
/// Replacement pins under a temporary name and renames over the old pin, so
/// a plugin opening the pin concurrently sees the old or the new program,
/// never nothing.
fn pin_program(
    layout: &PinLayout,
    name: &str,
    loaded: &ProgramInfo,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> anyhow::Result<ProgPin> {
    let path = layout.prog(name);
    let existing = if path.exists() {
        Some(ProgramInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?)
    } else {
        None
    };
    match existing {
        Some(old) if old.tag() == loaded.tag() && old.program_type() == loaded.program_type() => {
            Ok(ProgPin::Adopted)
        }
        Some(_) => {
            // bpffs refuses names with a dot (EPERM), so no ".tmp"-style name.
            let tmp = layout.progs_dir().join(format!("{name}_replacing"));
            let _ = std::fs::remove_file(&tmp);
            pin(&tmp).with_context(|| format!("pinning {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} over {}", tmp.display(), path.display()))?;
            Ok(ProgPin::Replaced)
        }
        None => {
            pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            Ok(ProgPin::Pinned)
        }
    }
}

/// Opens the pinned prefilter program (what links should run).
pub fn pinned_prefilter(layout: &PinLayout) -> anyhow::Result<Xdp> {
    let path = layout.prog(PROG_XDP_PREFILTER);
    if !path.exists() {
        bail!("{} is not pinned; start sluice-agent first", path.display());
    }
    Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)
        .with_context(|| format!("opening {}", path.display()))
}
