//! What the tests against a real Flower (`flwr==1.42.0` in the venv at `PUPIL_FLWR_VENV`,
//! default `$PUPIL_CACHE/.flwr`, which tests/run makes) share: the venv's `bin/`, a PATH
//! with it first (the SuperLink starts `flower-superexec` from there), free ports and
//! processes killed with their process group.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The venv's `bin/`, which must hold `flower-superlink`.
pub fn venv_bin() -> PathBuf {
    let venv = std::env::var("PUPIL_FLWR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("PUPIL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pupil")
                });
            cache.join(".flwr")
        });
    let bin = venv.join("bin");
    assert!(
        bin.join("flower-superlink").exists(),
        "flower-superlink is not in {}: python3 -m venv {} && pip install flwr==1.42.0 (tests/run does)",
        bin.display(),
        venv.display()
    );
    bin
}

/// PATH with the venv's `bin/` first.
pub fn path_with_venv() -> String {
    format!(
        "{}:{}",
        venv_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A loopback port nothing listens on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to a minute until something listens on `port`.
pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing listens on port {port} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A process started in its own process group (`process_group(0)`), killed with the
/// group (a SuperLink and the SuperExec it started) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
