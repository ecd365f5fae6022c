//! `sluice-demo` (`cargo xtask demo`): the XDP prefilter story in about a
//! minute, in namespaces it creates and removes: two hosts joined by a veth,
//! ICMP dropped at line rate while TCP flows, rules changed live with
//! `sluicectl`, the agent killed and restarted without a gap, and a clean
//! uninstall. Needs root; binaries from `$SLUICE_BIN_DIR`.
//!
//! Everything it makes is owned by drop guards: a panic, an error or Ctrl-C
//! (handled: the story stops at the next step and unwinds) removes it all.
//!
//! `--fast` skips the pauses between steps.

use std::{
    io::Write as _,
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{SigSet, Signal};
use tests::{traffic::tcp_connect, world::IFNAME, Sluicectl, TwoHosts};

/// Set by the signal thread on Ctrl-C / SIGTERM / SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const STEPS: usize = 10;
const PINGS: usize = 5;
const MIB: usize = 1 << 20;

struct Story {
    fast: bool,
    color: bool,
    step: usize,
}

impl Story {
    fn step(&mut self, title: &str) -> anyhow::Result<()> {
        self.check()?;
        self.step += 1;
        let (bold, plain) = if self.color {
            ("\x1b[1m", "\x1b[0m")
        } else {
            ("", "")
        };
        println!("\n{bold}[{}/{STEPS}] {title}{plain}", self.step);
        Ok(())
    }

    fn say(&self, text: &str) {
        println!("  {text}");
    }

    /// Prints `$ command` and its real output, indented.
    fn show(&self, command: &str, output: &str) {
        println!("  $ {command}");
        for line in output.lines() {
            println!("    {line}");
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// A pause to read by, cut short by Ctrl-C.
    fn pause(&self, secs: f64) -> anyhow::Result<()> {
        if !self.fast {
            let until = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < until {
                self.check()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::io::stdout().flush();
        self.check()
    }
}

fn ctl_show(story: &Story, ctl: &Sluicectl, args: &[&str]) -> anyhow::Result<()> {
    let out = ctl.run(args)?;
    story.show(&format!("sluicectl {}", args.join(" ")), &out);
    Ok(())
}

/// The id of the ICMP (IPv4) rule, from `filter list -o json`.
fn icmp_rule_id(ctl: &Sluicectl) -> anyhow::Result<u64> {
    ctl.filter_list()?
        .iter()
        .find(|r| r["match"]["proto"]["protocol"] == 1)
        .and_then(|r| r["id"].as_u64())
        .context("no ICMP rule installed")
}

fn ping_line(story: &Story, world: &TwoHosts, dst: IpAddr, expect: usize) -> anyhow::Result<()> {
    let got = world.ping_node(dst, PINGS)?;
    let verdict = if got == expect {
        "as expected"
    } else {
        "UNEXPECTED"
    };
    story.say(&format!(
        "ping {dst} from the peer: {got}/{PINGS} replies ({verdict})"
    ));
    ensure!(
        got == expect,
        "expected {expect}/{PINGS} replies from {dst}, got {got}"
    );
    Ok(())
}

fn tcp_line(story: &Story, world: &TwoHosts, server: &tests::TcpEchoServer) -> anyhow::Result<()> {
    let started = Instant::now();
    let got = server.transfer(&world.peer, MIB, Duration::from_secs(3))?;
    story.say(&format!(
        "TCP echo of 1 MiB to {}: {got} bytes back in {} ms",
        server.addr(),
        started.elapsed().as_millis()
    ));
    Ok(())
}

fn run(story: &mut Story) -> anyhow::Result<Vec<PathBuf>> {
    story.step("Two hosts joined by a veth")?;
    let world = TwoHosts::new()?;
    let leftovers = vec![
        world.node.path().to_owned(),
        world.peer.path().to_owned(),
        world.bpffs.path().to_owned(),
    ];
    story.say(&format!(
        "node: netns {}  {IFNAME} {} {}",
        world.node.name(),
        world.node_v4,
        world.node_v6
    ));
    story.say(&format!(
        "peer: netns {}  {IFNAME} {} {}",
        world.peer.name(),
        world.peer_v4,
        world.peer_v6
    ));
    story.say(&format!(
        "pins of this demo: {}",
        world.bpffs.path().display()
    ));
    let ctl = world.sluicectl();
    let server = world.echo_server(world.node_v4)?;
    let server6 = world.echo_server(world.node_v6)?;
    story.say("no agent yet: everything passes");
    ping_line(story, &world, world.node_v4, PINGS)?;
    ping_line(story, &world, world.node_v6, PINGS)?;
    tcp_line(story, &world, &server)?;
    story.pause(4.0)?;

    story.step("sluice-agent attaches the XDP prefilter to the node's eth0, dropping ICMP")?;
    let rules = world.write_file("prefilter.yaml", "rules:\n  - proto: icmp\n")?;
    let rules_arg = rules.to_str().context("utf-8 path")?.to_owned();
    story.show(
        &format!("cat {}", rules.display()),
        &std::fs::read_to_string(&rules)?,
    );
    let args = ["--prefilter", rules_arg.as_str()];
    story.say(&format!(
        "$ sluice-agent --bpffs-dir {} {}   (in netns {})",
        world.bpffs.path().display(),
        world.agent_args(&args).join(" "),
        world.node.name()
    ));
    let started = Instant::now();
    let mut agent = world.start_agent(&args)?;
    story.say(&format!(
        "ready in {} ms; XDP on the node's eth0: {}",
        started.elapsed().as_millis(),
        tests::link::xdp_attached(&world.node, IFNAME)?
            .map(|mode| format!("{mode:?}"))
            .unwrap_or_else(|| "none".into())
    ));
    ctl_show(story, &ctl, &["filter", "list"])?;
    story.pause(5.0)?;

    story.step("ICMP is dropped, TCP flows")?;
    ping_line(story, &world, world.node_v4, 0)?;
    tcp_line(story, &world, &server)?;
    let id = icmp_rule_id(&ctl)?;
    let (rule, reason) = (
        ctl.rule_packets(id)?,
        ctl.reason_packets("prefilter-drop-proto")?,
    );
    story.say(&format!(
        "counted: rule {id} matched {rule} packets, reason prefilter-drop-proto {reason} \
         (one per echo request sent)"
    ));
    ensure!(
        rule == PINGS as u64 && reason == PINGS as u64,
        "counters off by some"
    );
    ctl_show(story, &ctl, &["counters"])?;
    story.pause(6.0)?;

    story.step("Delete the rule at runtime")?;
    ctl_show(story, &ctl, &["filter", "del", "--proto", "icmp"])?;
    ping_line(story, &world, world.node_v4, PINGS)?;
    ctl_show(story, &ctl, &["filter", "list"])?;
    story.pause(4.0)?;

    story.step("Add it back, then kill -9 the agent: the pinned datapath keeps dropping")?;
    ctl_show(story, &ctl, &["filter", "add", "--proto", "icmp"])?;
    story.say(&format!("$ kill -9 {}", agent.pid()));
    let status = agent.sigkill()?;
    story.say(&format!("sluice-agent: {status}"));
    ping_line(story, &world, world.node_v4, 0)?;
    tcp_line(story, &world, &server)?;
    ctl_show(story, &ctl, &["filter", "list"])?;
    story.pause(5.0)?;

    story.step("Restart the agent while the peer pings every 5 ms")?;
    let pings = world.ping_loop(world.node_v4)?;
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut agent = world.start_agent(&args)?;
    let restart = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let window = pings.stop()?;
    story.say(&format!(
        "restart took {} ms; echo requests during it: {} sent, {} answered",
        restart.as_millis(),
        window.sent,
        window.received
    ));
    ensure!(
        window.received == 0,
        "ICMP passed during the restart: {window:?}"
    );
    let id = icmp_rule_id(&ctl)?;
    let expected = PINGS as u64 + window.sent;
    tests::wait_until(Duration::from_secs(2), || {
        ctl.rule_packets(id).is_ok_and(|p| p >= expected)
    });
    let counted = ctl.rule_packets(id)?;
    story.say(&format!(
        "rule {id} counter: {counted} = {PINGS} from before + {} during the restart",
        window.sent
    ));
    ensure!(
        counted == expected,
        "rule {id} counted {counted}, expected {expected}"
    );
    story.say("the new agent adopted what the old one pinned:");
    for line in agent.log().lines().filter(|l| l.contains("Adopted")) {
        // Without the timestamp and level.
        let line = line.split_once(" INFO ").map_or(line, |(_, rest)| rest);
        story.say(&format!("  {}", line.trim()));
    }
    ctl_show(story, &ctl, &["filter", "list"])?;
    story.pause(6.0)?;

    story.step("IPv6: drop ICMPv6 echo requests, TCP over IPv6 flows")?;
    ping_line(story, &world, world.node_v6, PINGS)?;
    ctl_show(
        story,
        &ctl,
        &[
            "filter",
            "add",
            "--proto",
            "icmpv6",
            "--icmp-type",
            "echo-request",
        ],
    )?;
    ping_line(story, &world, world.node_v6, 0)?;
    tcp_line(story, &world, &server6)?;
    story.pause(4.0)?;

    story.step("Deny the peer's /24, then allow the peer's /32 back")?;
    let net = world.net_v4.to_string();
    ctl_show(story, &ctl, &["filter", "add", "--cidr", &net])?;
    match tcp_connect(&world.peer, server.addr(), Duration::from_secs(1)) {
        Ok(_) => bail!("TCP connect from a denied network succeeded"),
        Err(err) => story.say(&format!(
            "TCP connect to {} from the peer: {err}",
            server.addr()
        )),
    }
    let host = format!("{}/32", world.peer_v4);
    ctl_show(
        story,
        &ctl,
        &["filter", "add", "--cidr", &host, "--action", "allow"],
    )?;
    tcp_line(story, &world, &server)?;
    ctl_show(story, &ctl, &["filter", "list"])?;
    ctl_show(story, &ctl, &["counters"])?;
    story.pause(7.0)?;

    story.step("Uninstall: stop the agent, sluice-agent --cleanup")?;
    agent.sigterm()?;
    story.say("sluice-agent stopped (SIGTERM); its pins stay, so ICMP is still dropped:");
    ping_line(story, &world, world.node_v4, 0)?;
    let out = world.bpffs.cleanup()?;
    story.show(
        &format!(
            "sluice-agent --cleanup --bpffs-dir {}",
            world.bpffs.path().display()
        ),
        &String::from_utf8_lossy(&out.stderr),
    );
    // The kernel detaches an unpinned link from a workqueue, a moment later.
    let detached = world.wait_xdp_detached(Duration::from_secs(2))?;
    story.say(&format!(
        "{} exists: {}; XDP on the node's eth0: {}",
        world.bpffs.path().display(),
        world.bpffs.path().exists(),
        !detached
    ));
    ensure!(detached, "XDP still attached 2 s after --cleanup");
    ping_line(story, &world, world.node_v4, PINGS)?;
    tcp_line(story, &world, &server)?;
    story.pause(3.0)?;

    story.step("Remove the namespaces")?;
    drop((server, server6));
    drop(world);
    Ok(leftovers)
}

/// Blocks the terminating signals in every thread and turns them into
/// [`INTERRUPTED`] on a thread of their own, so the story unwinds through
/// its drop guards instead of dying with pins and namespaces in place.
fn handle_signals() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if INTERRUPTED.swap(true, Ordering::Relaxed) {
                    eprintln!("\n{signal}: still cleaning up, a moment please");
                } else {
                    eprintln!("\n{signal}: stopping at the next step and cleaning up");
                }
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    tests::require_root("sluice-demo");
    if let Err(err) = handle_signals() {
        eprintln!("sluice-demo: {err:#}");
        return ExitCode::FAILURE;
    }
    let fast = std::env::args().skip(1).any(|a| a == "--fast");
    println!(
        "Sluice XDP prefilter demo (binaries from {})",
        tests::bin_dir().display()
    );
    let started = Instant::now();
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut story = Story {
        fast,
        color,
        step: 0,
    };
    let result = run(&mut story);
    // By here every guard has run: the world is gone, whatever happened.
    match result {
        Ok(leftovers) => {
            let left: Vec<_> = leftovers.iter().filter(|p| p.exists()).collect();
            if left.is_empty() {
                story.say("namespaces, veth, pins and agent: all gone");
                println!("\nDone in {:.0} s.", started.elapsed().as_secs_f64());
                ExitCode::SUCCESS
            } else {
                eprintln!("sluice-demo: left behind: {left:?}");
                ExitCode::FAILURE
            }
        }
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
            eprintln!("sluice-demo: interrupted; everything it made is removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("\nsluice-demo failed: {err:#}\n(everything it made is removed)");
            ExitCode::FAILURE
        }
    }
}
