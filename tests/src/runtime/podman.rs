//! podman with its CNI backend, private to one test: its own storage
//! (`--root`, `--runroot`, vfs), `containers.conf` (CNI backend, runc,
//! cgroupfs, file events, the test's plugin and network dirs), and a node
//! netns it runs in. Containers run from busybox root filesystems
//! ([`super::rootfs::busybox_rootfs`]), always with `--rm`.
//!
//! Dropping a [`Podman`] removes every container it still has (which runs
//! the plugin's DEL), unmounts whatever is left under its temp dir, and
//! removes the node netns.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    in_netns, output_timeout, run_timeout, toml_string, unmount_below, which, CgroupParent,
    CniCall, Network, PluginDir,
};
use crate::Netns;

/// How long one podman command may take (they take well under a second).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A private podman and the node netns it runs in.
pub struct Podman {
    network: Network,
    plugins: PluginDir,
    conf: PathBuf,
    storage_conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    ipam: PathBuf,
    rootfs_count: usize,
    cgroup: CgroupParent,
    // Dropped after `Drop::drop` has removed the containers: the netns
    // first, then the temp dir.
    node: Netns,
    dir: tempfile::TempDir,
}

impl Podman {
    /// Makes the world: a node netns, temp dirs, the conflist of `network`,
    /// `containers.conf` and `storage.conf`, and the plugin dir.
    pub fn new(network: Network) -> anyhow::Result<Self> {
        which("podman", "podman")?;
        which("runc", "runc")?;
        which("conmon", "conmon")?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-podman-")
            .tempdir()
            .context("creating a temp dir")?;
        let node = Netns::new().context("creating the node netns")?;
        let root = dir.path().join("root");
        let runroot = dir.path().join("runroot");
        let tmp = dir.path().join("tmp");
        let networks = dir.path().join("networks");
        let ipam = dir.path().join("ipam");
        for d in [&root, &runroot, &tmp, &networks, &ipam] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let plugins = PluginDir::new(dir.path(), &network)?;
        network.write_conflist(&networks, &ipam)?;
        let conf = dir.path().join("containers.conf");
        let toml_str = |p: &Path| toml_string(&p.to_string_lossy());
        // conmon runs `podman container cleanup` when a container exits,
        // with conmon's environment: CONTAINERS_CONF must be in it, or the
        // cleanup's DEL would look for plugins in the default dirs.
        let text = format!(
            "# Written by the Sluice runtime tests.\n\
             [containers]\n\
             default_ulimits = [\"nofile=16384:16384\", \"nproc=8192:8192\"]\n\
             \n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugins}]\n\
             network_config_dir = {networks}\n\
             \n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"runc\"\n\
             tmp_dir = {tmp}\n\
             conmon_env_vars = [\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\", {env}]\n",
            plugins = toml_str(plugins.bin()),
            networks = toml_str(&networks),
            tmp = toml_str(&tmp),
            env = toml_string(&format!("CONTAINERS_CONF={}", conf.display())),
        );
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        // Its own storage.conf, so the machine's (if any) cannot pick a
        // driver or options for our private store.
        let storage_conf = dir.path().join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                toml_str(&root),
                toml_str(&runroot)
            ),
        )?;
        Ok(Self {
            network,
            plugins,
            conf,
            storage_conf,
            root,
            runroot,
            ipam,
            rootfs_count: 0,
            cgroup: CgroupParent::new(),
            node,
            dir,
        })
    }

    /// The network containers join (`--network <name>`).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The node netns podman runs in (the bridge and host veths are there).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// host-local's data dir.
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam
    }

    /// The plugin dir with the logging wrapper.
    pub fn plugins(&self) -> &PluginDir {
        &self.plugins
    }

    /// Every call of the plugin under test so far.
    pub fn calls(&self) -> anyhow::Result<Vec<CniCall>> {
        self.plugins.calls()
    }

    /// `podman` with the private storage and config, in the node netns.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        in_netns(&mut cmd, &self.node);
        cmd
    }

    /// Runs `podman ARGS`; returns stdout, fails with stderr.
    pub fn podman(&self, args: &[&str]) -> anyhow::Result<String> {
        run_timeout(self.command().args(args), COMMAND_TIMEOUT)
    }

    /// A fresh busybox root filesystem for one container.
    pub fn rootfs(&mut self) -> anyhow::Result<PathBuf> {
        self.rootfs_count += 1;
        let path = self
            .dir
            .path()
            .join(format!("rootfs-{}", self.rootfs_count));
        super::rootfs::busybox_rootfs(&path)?;
        Ok(path)
    }

    /// `podman run -d --rm --name NAME --network NET --rootfs R /bin/sh -c SCRIPT`
    /// in a fresh rootfs; returns the container id.
    pub fn run_detached(&mut self, name: &str, script: &str) -> anyhow::Result<String> {
        let rootfs = self.rootfs()?;
        let network = self.network.name.clone();
        let out = run_timeout(
            self.command()
                .args(["run", "-d", "--rm", "--name", name, "--network", &network])
                .args(["--cgroup-parent", &self.cgroup.path()])
                .arg("--rootfs")
                .arg(&rootfs)
                .args(["/bin/sh", "-c", script]),
            COMMAND_TIMEOUT,
        )?;
        Ok(out.trim().to_owned())
    }

    /// `podman run --rm --network NET --rootfs R /bin/sh -c SCRIPT` in a
    /// fresh rootfs, in the foreground; returns its stdout, fails with its
    /// stderr (and exit code) when the script fails.
    pub fn run(&mut self, script: &str, timeout: Duration) -> anyhow::Result<String> {
        let rootfs = self.rootfs()?;
        let network = self.network.name.clone();
        run_timeout(
            self.command()
                .args(["run", "--rm", "--network", &network])
                .args(["--cgroup-parent", &self.cgroup.path()])
                .arg("--rootfs")
                .arg(&rootfs)
                .args(["/bin/sh", "-c", script]),
            timeout,
        )
    }

    /// The IPv4 address container `name` has on the network, from `podman
    /// inspect`.
    pub fn ip_of(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network.name
        );
        let out = self.podman(&["inspect", "--format", &format, name])?;
        out.trim()
            .parse()
            .with_context(|| format!("`podman inspect` gave {out:?} as the address of {name}"))
    }

    /// Whether a container named `name` exists.
    pub fn exists(&self, name: &str) -> anyhow::Result<bool> {
        let output = output_timeout(
            self.command().args(["container", "exists", name]),
            COMMAND_TIMEOUT,
        )?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "`podman container exists {name}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// `podman stop -t 0 NAME`, then waits (at most `timeout`) until the
    /// container is gone: `--rm` removes it after its cleanup (DEL) ran.
    pub fn stop(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        self.podman(&["stop", "-t", "0", name])?;
        let deadline = Instant::now() + timeout;
        while self.exists(name)? {
            if Instant::now() >= deadline {
                bail!("container {name} still exists {timeout:?} after `podman stop`");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers a failed test left: remove them (their DEL runs).
        match run_timeout(
            self.command()
                .args(["rm", "--force", "--all", "--time", "0"]),
            COMMAND_TIMEOUT,
        ) {
            Ok(_) => {}
            Err(err) => eprintln!("warning: removing leftover podman containers: {err:#}"),
        }
        if std::thread::panicking() {
            eprintln!(
                "---- CNI calls of the podman test ----\n{}---- end ----",
                self.plugins.summary()
            );
        }
        unmount_below(self.dir.path());
    }
}
