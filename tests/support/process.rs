//! The project's binaries as separate processes: built on demand, started with their log
//! (stderr) read line by line as it arrives, and waited on with a timeout, so that a test waits
//! on what a process says or does instead of sleeping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Binaries already built by this test binary, by name.
static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The path of the binary `bin` of the workspace package `package`, built first.
///
/// `env!("CARGO_BIN_EXE_...")` names only the binaries of a test's own package, and cargo builds
/// no binary of a dependency for another package's tests. So this runs `cargo build` for that one
/// binary (once per test binary; a no-op when it is up to date) into the target directory this
/// test binary was built in (`<target>/<profile>/deps/<test>`), and takes the executable's path
/// from cargo's JSON messages rather than guessing the layout. It builds the default (dev)
/// profile, which is what `cargo test` uses.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let target_dir = test_binary
        .ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps/");
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let messages = stdout_of(
        std::process::Command::new(env!("CARGO"))
            .current_dir(workspace)
            .args(["build", "--quiet", "--message-format=json", "--package"])
            .arg(package)
            .arg("--bin")
            .arg(bin)
            .arg("--target-dir")
            .arg(target_dir),
        &format!("cargo build --package {package} --bin {bin}"),
    );
    let path = messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == bin)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build named no executable for {package}'s {bin}"));
    built.insert(bin.to_string(), path.clone());
    path
}

/// A running process whose stderr (its log) is read as it arrives. It is killed if dropped, so
/// that a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line received so far, for failure messages and for [`Process::exit`].
    log: Vec<String>,
}

impl Process {
    /// Starts `command` (stdout discarded, stderr read), called `name` in failure messages.
    pub fn spawn(name: &str, mut command: tokio::process::Command) -> Process {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::unbounded_channel();
        // Read to the end whether or not the test still listens: a process blocked on a full
        // pipe would never exit.
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = sender.send(line);
            }
        });
        Process {
            name: name.to_string(),
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for the first log line (not yet returned) that contains `needle`, failing the test
    /// if the process ends or `timeout` passes first.
    pub async fn line_containing(&mut self, needle: &str, timeout: Duration) -> String {
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} ended without logging {needle:?}:\n{}",
                self.name,
                self.log()
            ),
            Err(_) => panic!(
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Asks the process to stop, with SIGTERM (as Kubernetes does), without waiting for it.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "cannot send SIGTERM to {}", self.name);
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        self.child
            .kill()
            .await
            .unwrap_or_else(|e| panic!("{} cannot be killed: {e}", self.name));
    }

    /// Waits for the process to exit, failing the test if it does not within `timeout`; returns
    /// how it exited and its whole log.
    pub async fn exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status.unwrap_or_else(|e| panic!("{} cannot be waited on: {e}", self.name))
            }
            Err(_) => panic!(
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.log()
            ),
        };
        // The reader ends at the end of the pipe, which the exit closed (unless a child of the
        // process still holds it: then what arrived in time is the log).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line);
            }
        })
        .await;
        (status, self.log())
    }

    /// The log lines received so far.
    pub fn log(&self) -> String {
        self.log.join("\n")
    }
}

/// What `command` prints on stdout once it has succeeded; panics naming it (`what`) with its
/// stderr when it cannot run or fails.
pub fn stdout_of(command: &mut std::process::Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
