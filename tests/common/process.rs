//! keygate as a real PROCESS (the built binary), for tests about the binary
//! itself (flags, signals, exit codes, logs) and for memory figures that
//! must be keygate's own and not the test's.
//!
//! Invariants: the config lives in a temp dir owned by the process value
//! (beside the log, which is the binary's stderr); the child is killed by
//! its own pid on drop unless it has already exited; nothing is waited for
//! by a fixed sleep.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, rss_kib_of};

/// The keygate binary: `KEYGATE_BIN` when set (`scripts/storm` points it at
/// the release build), else the one cargo built for these tests.
pub fn keygate_bin() -> PathBuf {
    std::env::var_os("KEYGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keygate")))
}

/// Sends signal `sig` (`HUP`, `TERM`, `STOP`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A config file (`keygate.toml`) in its own temp dir, which lives as long
/// as the value.
pub struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    /// Writes `text` to a new temp dir.
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::Builder::new()
            .prefix("keygate-config-")
            .tempdir()
            .expect("temp dir");
        let file = ConfigFile { dir };
        file.write(text);
        file
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    /// The temp dir the file is in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the file's text.
    pub fn write(&self, text: &str) {
        std::fs::write(self.path(), text).expect("write config");
    }
}

/// The lines in a config that [`KeygateProcess::start`] gives free ports.
const ANY_PORT_LISTEN: &str = "listen = \"127.0.0.1:0\"";
const ANY_PORT_ADMIN: &str = "admin_listen = \"127.0.0.1:0\"";

/// A keygate process started from the binary with `--config`, its stderr
/// in a log file beside the config; killed by its pid on drop.
pub struct KeygateProcess {
    child: Child,
    config: ConfigFile,
    /// The ports [`KeygateProcess::start`] chose.
    ports: Ports,
}

impl KeygateProcess {
    /// Starts keygate on a config whose `[proxy]` has the line `listen =
    /// "127.0.0.1:0"` (and, for an admin listener, `admin_listen =
    /// "127.0.0.1:0"`): each such line gets a free loopback port (see
    /// [`KeygateProcess::port`]), here and in every
    /// [`KeygateProcess::write_config`]. `env` is added to the environment.
    /// Does not wait: the caller waits for the state it needs
    /// ([`super::wait_serving`], ...).
    pub fn start(config_text: &str, env: &[(&str, &str)]) -> KeygateProcess {
        let has = |line: &str| config_text.lines().any(|l| l.trim() == line);
        assert!(
            has(ANY_PORT_LISTEN),
            "config has no `{ANY_PORT_LISTEN}` line to give a free port:\n{config_text}"
        );
        let ports = Ports {
            client: Some(free_port()),
            admin: has(ANY_PORT_ADMIN).then(free_port),
        };
        let config = ConfigFile::new(&ports.bind(config_text));
        let mut kg = KeygateProcess::spawn_file(config, env);
        kg.ports = ports;
        kg
    }

    /// Starts keygate on `config_text` exactly as given (ports included),
    /// with `env` added to the environment. Does not wait.
    pub fn spawn(config_text: &str, env: &[(&str, &str)]) -> KeygateProcess {
        KeygateProcess::spawn_file(ConfigFile::new(config_text), env)
    }

    fn spawn_file(config: ConfigFile, env: &[(&str, &str)]) -> KeygateProcess {
        let log = std::fs::File::create(config.dir().join("keygate.log")).expect("log file");
        let child = Command::new(keygate_bin())
            .arg("--config")
            .arg(config.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keygate");
        KeygateProcess {
            child,
            config,
            ports: Ports::default(),
        }
    }

    /// The client port chosen by [`KeygateProcess::start`].
    pub fn port(&self) -> u16 {
        (self.ports.client).expect("a client port chosen by KeygateProcess::start")
    }

    /// The admin port chosen by [`KeygateProcess::start`].
    pub fn admin_port(&self) -> u16 {
        (self.ports.admin).expect("an admin port chosen by KeygateProcess::start")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.config.path()
    }

    /// Rewrites the config file (for a SIGHUP reload), with the same free
    /// ports as at start when [`KeygateProcess::start`] chose them.
    pub fn write_config(&self, text: &str) {
        self.config.write(&self.ports.bind(text));
    }

    /// The log path (the binary's stderr).
    pub fn log_path(&self) -> PathBuf {
        self.config.dir().join("keygate.log")
    }

    /// Everything the binary has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// keygate's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// Sends signal `sig` (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `limit` for the process to exit; `None` if it still runs.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with keygate's log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("keygate exited ({status}); log:\n{}", self.log());
        }
    }
}

impl Drop for KeygateProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Free ports chosen for a config's any-port listen lines.
#[derive(Default, Clone, Copy)]
struct Ports {
    client: Option<u16>,
    admin: Option<u16>,
}

impl Ports {
    /// `config_text` with each any-port listen line bound to its chosen port.
    fn bind(&self, config_text: &str) -> String {
        let bound = |line: &str| {
            let port = match line.trim() {
                ANY_PORT_LISTEN => self.client,
                ANY_PORT_ADMIN => self.admin,
                _ => None,
            };
            match port {
                Some(port) => line.replace(":0\"", &format!(":{port}\"")),
                None => line.to_string(),
            }
        };
        let mut out: Vec<String> = config_text.lines().map(bound).collect();
        if config_text.ends_with('\n') {
            out.push(String::new());
        }
        out.join("\n")
    }
}
