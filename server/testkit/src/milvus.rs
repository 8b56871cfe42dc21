//! A real Milvus server for tests: `scripts/milvus_server.py` (PyPI `milvus` 2.3.5, installed by
//! `scripts/setup.sh`) in its own process group, on a free loopback port, with its data in a
//! folder the test owns, so the test can kill it (SIGKILL, mid-job) and start it again on the
//! same data. A test that needs it fails, never skips, when it cannot start.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take (the first one unpacks ~250 MB).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A running Milvus standalone server.
pub struct MilvusServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl MilvusServer {
    /// Starts a server keeping its data in `dir`, and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let mut s = Self {
            child: None,
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        s.spawn();
        s
    }

    /// The gRPC address for the client.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let script = crate::repo_root().join("scripts/milvus_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) if line.starts_with("milvus ready") => break,
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "the Milvus server exited before it was ready ({status:?}); is PyPI \
                         milvus==2.3.5 installed (scripts/setup.sh)? Logs: {}",
                        self.dir.join("logs").display()
                    );
                }
            }
            if started.elapsed() > START_TIMEOUT {
                kill_group(&mut child);
                panic!(
                    "Milvus was not ready after {START_TIMEOUT:?}; logs: {}",
                    self.dir.join("logs").display()
                );
            }
        }
        self.child = Some(child);
    }

    /// The pid of the Milvus server process itself (`milvus run standalone`, a child of the
    /// launcher script), to read its memory; `None` if it is not running.
    pub fn server_pid(&self) -> Option<u32> {
        let group = self.child.as_ref()?.id() as i32;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp …; comm may hold spaces, so split after its ')'.
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let pgrp: i32 = rest.split_whitespace().nth(2)?.parse().ok()?;
            (pgrp == group && comm == "milvus").then_some(pid)
        })
    }

    /// Kills the server and everything it started with SIGKILL: no shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Starts the server again on the same data and port (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals the process group the child leads.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for MilvusServer {
    fn drop(&mut self) {
        self.kill();
    }
}
