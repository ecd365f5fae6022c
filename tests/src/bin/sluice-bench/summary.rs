//! The suite's summary: every group's ratios in `bench/results/summary.json`,
//! `summary.md` and `summary.png` (a bar chart of the ratios), or
//! `summary-quick.*` for a `--quick` run.
//!
//! A run of some groups (`--only`) is merged into the summary already there:
//! the rows of the groups that ran are replaced, the others kept, so the
//! summary always holds the latest run of each group. Every row carries the
//! date and commit of the run that measured it.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ab_glyph::{point, Font as _, FontVec, PxScale, ScaleFont as _};
use anyhow::{bail, Context as _};
use plotters::{coord::Shift, prelude::*};
use serde_json::{json, Value};

use crate::machine::Machine;
use crate::ratio::{Better, Ratio};

/// Where the chart's font comes from: Debian's fonts-dejavu-core, which
/// `cargo xtask setup` installs. Text is drawn with ab_glyph directly
/// (plotters' own ab_glyph text drops each glyph's bearing, which spaces
/// letters unevenly).
pub const FONT_DIR: &str = "/usr/share/fonts/truetype/dejavu";
const FONT_REGULAR: &str = "DejaVuSans.ttf";
const FONT_BOLD: &str = "DejaVuSans-Bold.ttf";

/// The files of a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub png: PathBuf,
}

impl Paths {
    /// `summary.*`, or `summary-quick.*` for a `--quick` run (git-ignored,
    /// so a quick look never overwrites the full run's summary).
    pub fn new(out: &Path, quick: bool) -> Self {
        let stem = if quick { "summary-quick" } else { "summary" };
        Self {
            json: out.join(format!("{stem}.json")),
            markdown: out.join(format!("{stem}.md")),
            png: out.join(format!("{stem}.png")),
        }
    }
}

/// One run of one group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRun {
    pub group: String,
    /// When it started, `2026-11-29T07:40:00Z`.
    pub date: String,
    /// [`Machine::commit`]: `HEAD`, `-dirty` when the measured sources differ.
    pub commit: String,
    pub quick: bool,
    pub seconds: f64,
    /// [`Machine::json`].
    pub machine: Value,
    /// [`Machine::line`].
    pub machine_line: String,
}

impl GroupRun {
    pub fn new(group: &str, date: String, machine: &Machine, quick: bool, seconds: f64) -> Self {
        Self {
            group: group.to_owned(),
            date,
            commit: machine.commit.clone(),
            quick,
            seconds,
            machine: machine.json(),
            machine_line: machine.line(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "group": self.group,
            "date": self.date,
            "commit": self.commit,
            "quick": self.quick,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "machine": self.machine,
            "machine_line": self.machine_line,
        })
    }

    fn from_json(v: &Value) -> anyhow::Result<Self> {
        Ok(Self {
            group: string(v, "group")?,
            date: string(v, "date")?,
            commit: string(v, "commit")?,
            quick: v["quick"].as_bool().unwrap_or(false),
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            machine: v["machine"].clone(),
            machine_line: v["machine_line"].as_str().unwrap_or("").to_owned(),
        })
    }
}

/// A [`Ratio`] stamped with the run that measured it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub group: String,
    pub name: String,
    pub baseline: String,
    pub value: f64,
    pub better: Better,
    pub target: Option<f64>,
    pub date: String,
    pub commit: String,
}

impl Row {
    pub fn new(ratio: &Ratio, run: &GroupRun) -> Self {
        Self {
            group: ratio.group.to_owned(),
            name: ratio.name.clone(),
            baseline: ratio.baseline.clone(),
            value: ratio.value,
            better: ratio.better,
            target: ratio.target,
            date: run.date.clone(),
            commit: run.commit.clone(),
        }
    }

    /// The row as a [`Ratio`] (whose group must be `'static`: left empty),
    /// so that met and the JSON fields have one definition.
    fn ratio(&self) -> Ratio {
        Ratio {
            group: "",
            name: self.name.clone(),
            baseline: self.baseline.clone(),
            value: self.value,
            better: self.better,
            target: self.target,
        }
    }

    /// Whether the target is met (`None` without a target): [`Ratio::met`].
    pub fn met(&self) -> Option<bool> {
        self.ratio().met()
    }

    fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None => "-",
        }
    }

    /// `≤ 0.5` / `≥ 0.95`, or empty.
    fn target_text(&self) -> String {
        self.target.map_or_else(String::new, |t| {
            let op = match self.better {
                Better::Higher => "≥",
                Better::Lower => "≤",
            };
            format!("{op} {}", number(t))
        })
    }

    /// [`Ratio::json`] with the group, date and commit.
    fn json(&self) -> Value {
        let mut v = self.ratio().json();
        v["group"] = self.group.clone().into();
        v["date"] = self.date.clone().into();
        v["commit"] = self.commit.clone().into();
        v
    }

    fn from_json(v: &Value) -> anyhow::Result<Self> {
        Ok(Self {
            group: string(v, "group")?,
            name: string(v, "name")?,
            baseline: string(v, "baseline")?,
            value: v["ratio"].as_f64().context("no \"ratio\" number")?,
            better: match v["better"].as_str() {
                Some("higher") => Better::Higher,
                Some("lower") => Better::Lower,
                other => bail!("\"better\" is {other:?}, not \"higher\" or \"lower\""),
            },
            target: v["target"].as_f64(),
            date: string(v, "date")?,
            commit: string(v, "commit")?,
        })
    }
}

fn string(v: &Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {key:?} string"))
}

/// A ratio or target as people read it: enough digits to tell 0.965 from
/// 0.97, no trailing zeros.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let text = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 || v == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    };
    if text.contains('.') && !text.contains('e') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// The summary: the latest run of every group and its ratios.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// In the suite's group order.
    pub runs: Vec<GroupRun>,
    /// Grouped as `runs`, each group's rows in the order it reported them.
    pub rows: Vec<Row>,
}

impl Summary {
    /// The summary at `path`; empty when there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("reading {}", path.display()))
    }

    /// Replaces the runs and rows of every group in `runs` with these
    /// (a group that ran and reported nothing loses its old rows), keeps
    /// the other groups', and orders them as `order` (groups it does not
    /// name last, by name).
    pub fn merge(&mut self, runs: Vec<GroupRun>, rows: Vec<Row>, order: &[&str]) {
        let ran: BTreeSet<String> = runs
            .iter()
            .map(|r| r.group.clone())
            .chain(rows.iter().map(|r| r.group.clone()))
            .collect();
        self.runs.retain(|r| !ran.contains(&r.group));
        self.rows.retain(|r| !ran.contains(&r.group));
        self.runs.extend(runs);
        self.rows.extend(rows);
        let rank = |group: &str| {
            (
                order
                    .iter()
                    .position(|g| *g == group)
                    .unwrap_or(order.len()),
                group.to_owned(),
            )
        };
        // Stable: each group's rows keep their order.
        self.runs.sort_by_key(|r| rank(&r.group));
        self.rows.sort_by_key(|r| rank(&r.group));
    }

    /// Groups in the order of the rows, with their rows.
    fn groups(&self) -> Vec<(&str, Vec<&Row>)> {
        let mut groups: Vec<(&str, Vec<&Row>)> = Vec::new();
        for row in &self.rows {
            match groups.last_mut() {
                Some((g, rows)) if *g == row.group => rows.push(row),
                _ => groups.push((&row.group, vec![row])),
            }
        }
        groups
    }

    fn run(&self, group: &str) -> Option<&GroupRun> {
        self.runs.iter().find(|r| r.group == group)
    }

    /// (met, missed, without a target)
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |m| self.rows.iter().filter(|r| r.met() == m).count();
        (count(Some(true)), count(Some(false)), count(None))
    }

    pub fn json(&self) -> Value {
        let (met, missed, none) = self.counts();
        json!({
            "title": "Sluice benchmarks: ratios against a baseline measured in the same run",
            "counts": { "met": met, "missed": missed, "no_target": none },
            "runs": self.runs.iter().map(GroupRun::json).collect::<Vec<_>>(),
            "ratios": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> anyhow::Result<Self> {
        let list = |key: &str| {
            v[key]
                .as_array()
                .with_context(|| format!("no {key:?} list"))
        };
        Ok(Self {
            runs: list("runs")?
                .iter()
                .enumerate()
                .map(|(i, r)| GroupRun::from_json(r).with_context(|| format!("runs[{i}]")))
                .collect::<anyhow::Result<_>>()?,
            rows: list("ratios")?
                .iter()
                .enumerate()
                .map(|(i, r)| Row::from_json(r).with_context(|| format!("ratios[{i}]")))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// The Markdown page: the runs, the table of every ratio, the chart
    /// (`png`, a file name next to the page).
    pub fn markdown(&self, png: &str) -> String {
        let mut md = String::new();
        let (met, missed, none) = self.counts();
        let _ = writeln!(md, "## Sluice benchmark summary\n");
        let _ = writeln!(
            md,
            "Every ratio is a measurement divided by a baseline measured in the same run on the same machine; \
             the target column is the issue's. {met} met, {missed} missed, {none} without a target. \
             Each group's own `<group>.md` has the measurements behind its ratios.\n"
        );
        let _ = writeln!(md, "| group | run | sluice commit | machine | seconds |");
        let _ = writeln!(md, "|---|---|---|---|---:|");
        for r in &self.runs {
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | {} | {:.0} |",
                r.group,
                r.date,
                if r.quick { " (quick)" } else { "" },
                r.commit,
                cell(&r.machine_line),
                r.seconds
            );
        }
        let _ = writeln!(md);
        md.push_str(&self.table());
        let _ = writeln!(md, "\n![ratios of every group]({png})");
        md
    }

    /// The table of ratios alone (what the README shows).
    pub fn table(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| group | measurement | baseline | ratio | better | target | verdict |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.group,
                cell(&r.name),
                cell(&r.baseline),
                number(r.value),
                match r.better {
                    Better::Higher => "higher",
                    Better::Lower => "lower",
                },
                r.target_text(),
                match r.met() {
                    Some(false) => "**missed**",
                    _ => r.verdict(),
                }
            );
        }
        md
    }

    /// A compact table for the terminal: the rows of `groups`.
    pub fn terminal(&self, groups: &[&str]) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{:<7} {:>9} {:>8} {:<7} measurement (vs baseline)",
            "group", "ratio", "target", "verdict"
        );
        for r in self
            .rows
            .iter()
            .filter(|r| groups.contains(&r.group.as_str()))
        {
            let _ = writeln!(
                text,
                "{:<7} {:>9} {:>8} {:<7} {} (vs {})",
                r.group,
                format!("{}x", number(r.value)),
                r.target_text(),
                r.verdict(),
                r.name,
                r.baseline
            );
        }
        text
    }

    /// Writes the JSON, the Markdown and the chart.
    pub fn write(&self, paths: &Paths) -> anyhow::Result<()> {
        if let Some(dir) = paths.json.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut json_text = serde_json::to_string_pretty(&self.json())?;
        json_text.push('\n');
        std::fs::write(&paths.json, json_text)
            .with_context(|| format!("writing {}", paths.json.display()))?;
        let png_name = paths
            .png
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("summary.png");
        std::fs::write(&paths.markdown, self.markdown(png_name))
            .with_context(|| format!("writing {}", paths.markdown.display()))?;
        self.chart(&paths.png)
            .with_context(|| format!("drawing {}", paths.png.display()))
    }
}

/// Text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The chart's fonts, read once.
pub struct Fonts {
    regular: FontVec,
    bold: FontVec,
}

/// Reads the chart's fonts (once per process).
pub fn fonts() -> anyhow::Result<&'static Fonts> {
    static FONTS: OnceLock<Result<Fonts, String>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let read = |file: &str| -> Result<FontVec, String> {
                let path = Path::new(FONT_DIR).join(file);
                let bytes = std::fs::read(&path).map_err(|e| {
                    format!(
                        "the chart's font {}: {e} (`apt-get install fonts-dejavu-core`, \
                         which `cargo xtask setup` does)",
                        path.display()
                    )
                })?;
                FontVec::try_from_vec(bytes)
                    .map_err(|e| format!("{}: not a font: {e}", path.display()))
            };
            let regular = read(FONT_REGULAR)?;
            // Bold falls back to regular.
            let bold = read(FONT_BOLD).or_else(|_| read(FONT_REGULAR))?;
            Ok(Fonts { regular, bold })
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

// The chart's layout, in pixels.
const WIDTH: u32 = 1500;
const LABELS: u32 = 660;
const HEADER: i32 = 118;
const FOOTER: i32 = 62;
const ROW: i32 = 26;
const GROUP_ROW: i32 = 34;
/// Room left and right of the data for the value labels.
const TEXT_ROOM: f64 = 125.0;

const MET: RGBColor = RGBColor(46, 160, 67);
const MISSED: RGBColor = RGBColor(214, 48, 49);
const NO_TARGET: RGBColor = RGBColor(140, 150, 165);
const INK: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(105, 105, 105);
const GRID: RGBColor = RGBColor(225, 225, 225);
const BAND: RGBColor = RGBColor(238, 241, 245);

fn colour(row: &Row) -> RGBColor {
    match row.met() {
        Some(true) => MET,
        Some(false) => MISSED,
        None => NO_TARGET,
    }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Centre,
    Right,
}

/// How a text is drawn: pixel size, weight, colour, and which end of it is
/// at the given point (vertically it is always centred there).
#[derive(Clone, Copy)]
struct Style {
    size: f32,
    bold: bool,
    colour: RGBColor,
    align: Align,
}

const fn style(size: f32, bold: bool, colour: RGBColor, align: Align) -> Style {
    Style {
        size,
        bold,
        colour,
        align,
    }
}

/// What a drawing error becomes.
fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Draws text with ab_glyph straight onto the bitmap: each glyph at its
/// advance (with kerning and its own bearing), anti-aliased by coverage.
struct Painter<'a, DB: DrawingBackend> {
    area: &'a DrawingArea<DB, Shift>,
    fonts: &'static Fonts,
}

impl<DB: DrawingBackend> Painter<'_, DB> {
    fn font(&self, bold: bool) -> &FontVec {
        if bold {
            &self.fonts.bold
        } else {
            &self.fonts.regular
        }
    }

    fn width(&self, text: &str, s: Style) -> f32 {
        let font = self.font(s.bold).as_scaled(PxScale::from(s.size));
        let mut width = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                width += font.kern(p, id);
            }
            width += font.h_advance(id);
            prev = Some(id);
        }
        width
    }

    fn text(&self, text: &str, (x, y): (i32, i32), s: Style) -> anyhow::Result<()> {
        let font = self.font(s.bold).as_scaled(PxScale::from(s.size));
        let width = self.width(text, s);
        let mut caret = x as f32
            - match s.align {
                Align::Left => 0.0,
                Align::Centre => width / 2.0,
                Align::Right => width,
            };
        // Centred on y: half-way between ascent and descent.
        let baseline = y as f32 + (font.ascent() + font.descent()) / 2.0;
        let mut prev = None;
        let mut failed = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                caret += font.kern(p, id);
            }
            let glyph = id.with_scale_and_position(font.scale(), point(caret, baseline));
            if let Some(outline) = font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let at = (
                        bounds.min.x as i32 + gx as i32,
                        bounds.min.y as i32 + gy as i32,
                    );
                    if let Err(e) = self.area.draw_pixel(at, &s.colour.mix(f64::from(coverage))) {
                        failed.get_or_insert(e.to_string());
                    }
                });
            }
            caret += font.h_advance(id);
            prev = Some(id);
        }
        match failed {
            Some(e) => Err(anyhow::anyhow!("drawing text: {e}")),
            None => Ok(()),
        }
    }

    /// `text` cut with an ellipsis to at most `max` pixels.
    fn fit(&self, text: &str, s: Style, max: u32) -> String {
        let fits = |t: &str| self.width(t, s) <= max as f32;
        if fits(text) {
            return text.to_owned();
        }
        let mut chars: Vec<char> = text.chars().collect();
        while chars.pop().is_some() {
            let cut = format!("{}…", chars.iter().collect::<String>().trim_end());
            if fits(&cut) {
                return cut;
            }
        }
        String::new()
    }
}

impl Summary {
    /// The chart: one horizontal bar per ratio on a log scale, from the
    /// baseline (1.0) to the ratio, coloured by its target (met, missed,
    /// none), with the target marked on its row, grouped by group.
    pub fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let fonts = fonts()?;
        let groups = self.groups();
        let body: i32 = groups
            .iter()
            .map(|(_, rows)| GROUP_ROW + ROW * rows.len() as i32)
            .sum::<i32>()
            .max(ROW * 2);
        let height = (HEADER + body + FOOTER) as u32;
        let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let p = Painter { area: &root, fonts };

        // Header: title, machine, runs, legend.
        p.text(
            "Sluice benchmarks: ratio to a baseline measured in the same run",
            (20, 22),
            style(24.0, true, INK, Align::Left),
        )?;
        let machines: BTreeSet<&str> = self.runs.iter().map(|r| r.machine_line.as_str()).collect();
        let machine = match machines.len() {
            0 => "no runs yet".to_owned(),
            1 => machines.into_iter().collect(),
            n => format!("{n} machines (see summary.json)"),
        };
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{} {}{} @ {}",
                    r.group,
                    r.date.split('T').next().unwrap_or(&r.date),
                    if r.quick { " (quick)" } else { "" },
                    r.commit
                )
            })
            .collect();
        let sub = style(15.0, false, MUTED, Align::Left);
        p.text(
            &p.fit(&format!("Machine: {machine}"), sub, WIDTH - 40),
            (20, 52),
            sub,
        )?;
        p.text(
            &p.fit(
                &format!("Latest run of each group: {}", runs.join("; ")),
                sub,
                WIDTH - 40,
            ),
            (20, 74),
            sub,
        )?;
        let legend = style(15.0, false, INK, Align::Left);
        let mut x = 20;
        for (colour, label) in [
            (Some(MET), "target met"),
            (Some(MISSED), "target missed"),
            (Some(NO_TARGET), "no target"),
            (None, "target"),
        ] {
            let mark = match colour {
                Some(c) => Rectangle::new([(x, 93), (x + 22, 109)], c.filled()),
                None => Rectangle::new([(x + 9, 89), (x + 12, 113)], INK.filled()),
            };
            root.draw(&mark).map_err(draw_err)?;
            p.text(label, (x + 30, 101), legend)?;
            x += 30 + p.width(label, legend) as i32 + 28;
        }
        p.text(
            "Each bar runs from 1.0 (the baseline) to the ratio; its label: the ratio (the target)",
            (x + 10, 101),
            style(14.0, false, MUTED, Align::Left),
        )?;

        // The plot: x is the ratio (log), y counts pixels down from the top
        // of the body, so rows map one to one.
        let (lo, hi) = x_range(&self.rows);
        let plot_area = root.margin(HEADER as u32, FOOTER as u32, LABELS, 40);
        let mut chart = ChartBuilder::on(&plot_area)
            .build_cartesian_2d((lo..hi).log_scale(), f64::from(body)..0.0)
            .map_err(draw_err)?;
        let px = |chart: &ChartContext<_, _>, v: f64, y: f64| chart.backend_coord(&(v, y));
        let (plot_left, plot_top) = px(&chart, lo, 0.0);
        let (plot_right, plot_bottom) = px(&chart, hi, f64::from(body));

        // Group bands behind everything, across labels and plot.
        let mut y = 0;
        for (_, rows) in &groups {
            let (_, top) = px(&chart, lo, f64::from(y));
            root.draw(&Rectangle::new(
                [(0, top), (WIDTH as i32, top + GROUP_ROW)],
                BAND.filled(),
            ))
            .map_err(draw_err)?;
            y += GROUP_ROW + ROW * rows.len() as i32;
        }

        // Grid and the x axis.
        for tick in ticks(lo, hi) {
            let (tx, _) = px(&chart, tick, 0.0);
            root.draw(&PathElement::new(
                vec![(tx, plot_top), (tx, plot_bottom)],
                GRID.stroke_width(1),
            ))
            .map_err(draw_err)?;
            p.text(
                &format!("{}x", number(tick)),
                (tx, plot_bottom + 14),
                style(14.0, false, INK, Align::Centre),
            )?;
        }
        root.draw(&PathElement::new(
            vec![(plot_left, plot_bottom), (plot_right, plot_bottom)],
            INK.stroke_width(1),
        ))
        .map_err(draw_err)?;
        p.text(
            "ratio to the same-run baseline (log scale)",
            ((plot_left + plot_right) / 2, plot_bottom + 40),
            style(15.0, false, INK, Align::Centre),
        )?;

        // Rows.
        let name_style = style(15.0, false, INK, Align::Left);
        let baseline_style = style(15.0, false, MUTED, Align::Left);
        let group_style = style(17.0, true, INK, Align::Left);
        let run_style = style(14.0, false, MUTED, Align::Left);
        let value_style = style(14.0, true, INK, Align::Left);
        let mut y = 0.0;
        for (group, rows) in &groups {
            let (_, top) = px(&chart, lo, y);
            let centre = top + GROUP_ROW / 2;
            p.text(group, (14, centre), group_style)?;
            if let Some(r) = self.run(group) {
                let when = format!(
                    "{}{} @ {}",
                    r.date,
                    if r.quick { " (quick)" } else { "" },
                    r.commit
                );
                let x = 14 + p.width(group, group_style) as i32 + 16;
                p.text(&when, (x, centre), run_style)?;
            }
            y += f64::from(GROUP_ROW);
            for row in rows {
                let centre = y + f64::from(ROW) / 2.0;
                let (_, cy) = px(&chart, lo, centre);
                // The name, then its baseline in grey, cut to fit.
                let room = LABELS - 50;
                let name = p.fit(&row.name, name_style, room);
                p.text(&name, (30, cy), name_style)?;
                let used = p.width(&name, name_style) as u32 + 10;
                if used + 60 < room {
                    let vs = p.fit(&format!("vs {}", row.baseline), baseline_style, room - used);
                    p.text(&vs, (30 + used as i32, cy), baseline_style)?;
                }

                let value_text = match row.target {
                    Some(_) => format!("{}x ({})", number(row.value), row.target_text()),
                    None => format!("{}x", number(row.value)),
                };
                if !(row.value.is_finite() && row.value > 0.0) {
                    let (bx, _) = px(&chart, 1.0, centre);
                    p.text(
                        &format!("{value_text}: not drawn"),
                        (bx + 8, cy),
                        value_style,
                    )?;
                    y += f64::from(ROW);
                    continue;
                }
                let half = f64::from(ROW) * 0.36;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(1.0, centre - half), (row.value, centre + half)],
                        colour(row).filled(),
                    )))
                    .map_err(draw_err)?;
                let target = row.target.filter(|t| t.is_finite() && *t > 0.0);
                if let Some(t) = target {
                    let (tx, _) = px(&chart, t, centre);
                    let (_, top) = px(&chart, lo, y + 2.0);
                    root.draw(&Rectangle::new(
                        [(tx - 1, top), (tx + 2, top + ROW - 4)],
                        INK.filled(),
                    ))
                    .map_err(draw_err)?;
                }
                // The label goes past the bar's end and the target mark,
                // on the far side from 1.0.
                if row.value >= 1.0 {
                    let end = target.map_or(row.value, |t| t.max(row.value));
                    let (ex, _) = px(&chart, end, centre);
                    p.text(&value_text, (ex + 8, cy), value_style)?;
                } else {
                    let end = target.map_or(row.value, |t| t.min(row.value));
                    let (ex, _) = px(&chart, end, centre);
                    let right = Style {
                        align: Align::Right,
                        ..value_style
                    };
                    p.text(&value_text, (ex - 8, cy), right)?;
                }
                y += f64::from(ROW);
            }
        }
        if groups.is_empty() {
            p.text(
                "no ratios yet",
                ((plot_left + plot_right) / 2, (plot_top + plot_bottom) / 2),
                style(16.0, false, MUTED, Align::Centre),
            )?;
        }
        // The baseline, over the bars.
        let (bx, _) = px(&chart, 1.0, 0.0);
        root.draw(&Rectangle::new(
            [(bx - 1, plot_top), (bx + 1, plot_bottom)],
            INK.filled(),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
        Ok(())
    }
}

/// The x range: every ratio, target and 1.0, with room on both sides for
/// the value labels (the plot is about `WIDTH - LABELS - 40` pixels wide).
fn x_range(rows: &[Row]) -> (f64, f64) {
    let values = rows
        .iter()
        .flat_map(|r| [Some(r.value), r.target])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0)
        .chain([1.0]);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values {
        lo = lo.min(v.log10());
        hi = hi.max(v.log10());
    }
    // At least 0.5x..2x.
    lo = lo.min(-0.301);
    hi = hi.max(0.301);
    let width = f64::from(WIDTH - LABELS - 40);
    let span = hi - lo;
    let pad = span * TEXT_ROOM / (width - 2.0 * TEXT_ROOM);
    (10f64.powf(lo - pad), 10f64.powf(hi + pad))
}

/// Grid values in `lo..=hi`: 1, 2, 5 times powers of ten, fewer when the
/// range is wide.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10();
    let steps: &[f64] = if decades > 4.0 {
        &[1.0]
    } else if decades > 2.0 {
        &[1.0, 3.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut out = Vec::new();
    let mut power = 10f64.powi(lo.log10().floor() as i32);
    while power <= hi {
        for s in steps {
            let v = power * s;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        power *= 10.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(
        group: &'static str,
        name: &str,
        value: f64,
        better: Better,
        target: Option<f64>,
    ) -> Ratio {
        Ratio {
            group,
            name: name.into(),
            baseline: "baseline".into(),
            value,
            better,
            target,
        }
    }

    fn run(group: &str, date: &str) -> GroupRun {
        GroupRun {
            group: group.into(),
            date: date.into(),
            commit: format!("c-{date}"),
            quick: false,
            seconds: 12.0,
            machine: json!({"cpu": "test"}),
            machine_line: "test CPU, 2 CPUs".into(),
        }
    }

    fn rows(run: &GroupRun, ratios: &[Ratio]) -> Vec<Row> {
        ratios.iter().map(|r| Row::new(r, run)).collect()
    }

    const ORDER: &[&str] = &["cni", "policy", "net", "xdp", "progs"];

    #[test]
    fn quick_runs_have_files_of_their_own() {
        let out = Path::new("/x/bench/results");
        let full = Paths::new(out, false);
        assert_eq!(full.json, out.join("summary.json"));
        assert_eq!(full.markdown, out.join("summary.md"));
        assert_eq!(full.png, out.join("summary.png"));
        let quick = Paths::new(out, true);
        assert_eq!(quick.json, out.join("summary-quick.json"));
        assert_eq!(quick.markdown, out.join("summary-quick.md"));
        assert_eq!(quick.png, out.join("summary-quick.png"));
    }

    #[test]
    fn met_missed_and_no_target() {
        let cases = [
            (
                ratio("net", "a", 0.96, Better::Higher, Some(0.95)),
                Some(true),
            ),
            (
                ratio("net", "b", 0.95, Better::Higher, Some(0.95)),
                Some(true),
            ),
            (
                ratio("net", "c", 0.94, Better::Higher, Some(0.95)),
                Some(false),
            ),
            (ratio("cni", "d", 0.5, Better::Lower, Some(0.5)), Some(true)),
            (
                ratio("cni", "e", 4.05, Better::Lower, Some(0.5)),
                Some(false),
            ),
            (ratio("progs", "f", 3.0, Better::Lower, None), None),
        ];
        let r = run("x", "d1");
        for (ratio, want) in &cases {
            let row = Row::new(ratio, &r);
            assert_eq!(row.met(), *want, "{}", ratio.name);
            assert_eq!(row.met(), ratio.met(), "{}: as Ratio::met", ratio.name);
        }
        let mut s = Summary::default();
        let all: Vec<Row> = cases.iter().map(|(q, _)| Row::new(q, &r)).collect();
        s.merge(vec![], all, ORDER);
        assert_eq!(s.counts(), (3, 2, 1));
        let table = s.table();
        assert!(
            table.contains("| cni | e | baseline | 4.05 | lower | ≤ 0.5 | **missed** |"),
            "{table}"
        );
        assert!(
            table.contains("| net | a | baseline | 0.96 | higher | ≥ 0.95 | met |"),
            "{table}"
        );
        assert!(
            table.contains("| progs | f | baseline | 3 | lower |  | - |"),
            "{table}"
        );
    }

    #[test]
    fn merging_replaces_the_groups_that_ran_and_keeps_the_others() {
        let (cni1, net1, xdp1) = (run("cni", "d1"), run("net", "d1"), run("xdp", "d1"));
        let mut s = Summary::default();
        let mut first = rows(
            &net1,
            &[ratio("net", "stream", 0.9, Better::Higher, Some(0.95))],
        );
        first.extend(rows(
            &cni1,
            &[
                ratio("cni", "ADD", 4.0, Better::Lower, Some(0.5)),
                ratio("cni", "DEL", 2.0, Better::Lower, Some(0.5)),
            ],
        ));
        first.extend(rows(
            &xdp1,
            &[ratio("xdp", "drop", 3.5, Better::Higher, Some(3.0))],
        ));
        s.merge(vec![net1, cni1, xdp1], first, ORDER);
        // Ordered as the suite's groups, each group's rows as reported.
        let names: Vec<&str> = s.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ADD", "DEL", "stream", "drop"]);
        let groups: Vec<&str> = s.runs.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["cni", "net", "xdp"]);

        // Through JSON and back, as the next run reads it.
        let mut s = Summary::from_json(&s.json()).expect("summary round-trips");
        // `--only cni --only xdp`: cni reports one row, xdp none.
        let (cni2, xdp2) = (run("cni", "d2"), run("xdp", "d2"));
        let second = rows(&cni2, &[ratio("cni", "ADD", 0.4, Better::Lower, Some(0.5))]);
        s.merge(vec![xdp2, cni2], second, ORDER);
        let got: Vec<(&str, &str, &str)> = s
            .rows
            .iter()
            .map(|r| (r.group.as_str(), r.name.as_str(), r.date.as_str()))
            .collect();
        assert_eq!(got, [("cni", "ADD", "d2"), ("net", "stream", "d1")]);
        assert_eq!(s.rows[0].commit, "c-d2");
        assert_eq!(s.rows[0].met(), Some(true));
        let runs: Vec<(&str, &str)> = s
            .runs
            .iter()
            .map(|r| (r.group.as_str(), r.date.as_str()))
            .collect();
        assert_eq!(runs, [("cni", "d2"), ("net", "d1"), ("xdp", "d2")]);
        // A group the suite no longer has goes last.
        let old = run("gone", "d0");
        s.merge(
            vec![old.clone()],
            rows(&old, &[ratio("cni", "x", 1.0, Better::Lower, None)])
                .into_iter()
                .map(|mut r| {
                    r.group = "gone".into();
                    r
                })
                .collect(),
            ORDER,
        );
        assert_eq!(s.rows.last().map(|r| r.group.as_str()), Some("gone"));
    }

    #[test]
    fn load_and_write_merge_with_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path(), true);
        assert_eq!(
            Summary::load(&paths.json).expect("no file is empty"),
            Summary::default()
        );
        std::fs::write(&paths.json, "{\"runs\": 3}").expect("write");
        assert!(Summary::load(&paths.json).is_err());

        let mut s = Summary::default();
        let r = run("net", "d1");
        s.merge(
            vec![r.clone()],
            rows(
                &r,
                &[ratio("net", "a | b", 1.2, Better::Higher, Some(1.15))],
            ),
            ORDER,
        );
        std::fs::write(&paths.json, serde_json::to_string(&s.json()).expect("json"))
            .expect("write");
        let loaded = Summary::load(&paths.json).expect("load");
        assert_eq!(loaded, s);
        let md = loaded.markdown("summary-quick.png");
        assert!(
            md.contains("| net | a \\| b | baseline | 1.2 | higher | ≥ 1.15 | met |"),
            "{md}"
        );
        assert!(
            md.contains("![ratios of every group](summary-quick.png)"),
            "{md}"
        );
        assert!(md.contains("1 met, 0 missed, 0 without a target"), "{md}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(4.0512), "4.051");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(0.965), "0.965");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(0.0012), "1.20e-3");
        assert_eq!(number(1.0), "1");
    }

    #[test]
    fn ticks_cover_the_range() {
        assert_eq!(ticks(0.3, 6.0), [0.5, 1.0, 2.0, 5.0]);
        let (lo, hi) = x_range(&[]);
        assert!(lo < 0.5 && hi > 2.0, "{lo}..{hi}");
    }

    /// Renders the chart of a summary like a full run's into a temp dir.
    #[test]
    fn chart_renders() {
        if !Path::new(FONT_DIR).join(FONT_REGULAR).is_file() {
            eprintln!(
                "SKIPPED chart_renders: {FONT_DIR}/{FONT_REGULAR} is missing \
                 (`apt-get install fonts-dejavu-core`, which `cargo xtask setup` does)"
            );
            return;
        }
        let mut s = Summary::default();
        type Spec = (&'static str, f64, Better, Option<f64>);
        let specs: [(&'static str, &[Spec]); 3] = [
            (
                "cni",
                &[
                    ("ADD p50, sequential", 4.05, Better::Lower, Some(0.5)),
                    ("DEL p50, parallel, ipMasq", 0.58, Better::Lower, Some(0.5)),
                    (
                        "DEL p50, sequential, ipMasq",
                        0.45,
                        Better::Lower,
                        Some(0.5),
                    ),
                ],
            ),
            (
                "net",
                &[
                    (
                        "TCP stream, same node, sluice routed",
                        0.97,
                        Better::Higher,
                        Some(0.95),
                    ),
                    ("TCP_RR", 0.9, Better::Higher, Some(0.97)),
                    ("CPU per Gbit/s", 1.02, Better::Lower, Some(1.05)),
                ],
            ),
            (
                "progs",
                &[(
                    "from_pod, established flow, ns per packet over empty",
                    2.5,
                    Better::Lower,
                    None,
                )],
            ),
        ];
        for (group, ratios) in specs {
            let r = run(group, "2026-11-29T08:00:00Z");
            let ratios: Vec<Ratio> = ratios
                .iter()
                .map(|(name, v, b, t)| ratio(group, name, *v, *b, *t))
                .collect();
            s.merge(vec![r.clone()], rows(&r, &ratios), ORDER);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path(), false);
        s.write(&paths).expect("summary written");
        let png = std::fs::read(&paths.png).expect("png written");
        assert_eq!(&png[1..4], b"PNG");
        // Keep a copy to look at: SLUICE_CHART_OUT=/tmp/chart.png.
        if let Some(to) = std::env::var_os("SLUICE_CHART_OUT") {
            std::fs::copy(&paths.png, to).expect("copy");
        }
        // An empty summary draws too.
        Summary::default()
            .chart(&dir.path().join("empty.png"))
            .expect("empty chart");
    }
}
