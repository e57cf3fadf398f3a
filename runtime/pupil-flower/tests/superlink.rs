//! Against a real Flower SuperLink (`flower-superlink --insecure` from `flwr==1.42.0`, in
//! the venv at `PUPIL_FLWR_VENV`, default `$PUPIL_CACHE/.flwr`, which tests/run makes): a
//! pupil node registers its key, activates, sends heartbeats, pulls (no run: no messages),
//! comes back with the same id from its key file after going offline, deactivates and
//! unregisters; a heartbeat signed by another key is refused with 401, and a second node
//! gets another id.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pupil_flower::{FleetClient, FleetError, NodeKey};

/// The venv holding flwr.
fn venv() -> PathBuf {
    if let Ok(v) = std::env::var("PUPIL_FLWR_VENV") {
        return PathBuf::from(v);
    }
    let cache = std::env::var("PUPIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pupil")
        });
    cache.join(".flwr")
}

/// A running SuperLink, killed when dropped.
struct SuperLink {
    child: Child,
    port: u16,
}

impl Drop for SuperLink {
    /// Kills its process group: the SuperLink and the SuperExec it started.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `flower-superlink --insecure` on a free port with an in-memory state and waits
/// until it accepts connections.
fn superlink() -> SuperLink {
    let bin = venv().join("bin");
    assert!(
        bin.join("flower-superlink").exists(),
        "flower-superlink is not in {}: python3 -m venv {0}/.. && pip install flwr==1.42.0 (tests/run does)",
        bin.display()
    );
    let port = free_port();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(bin.join("flower-superlink"))
        .args([
            "--insecure",
            "--database",
            ":memory:",
            "--port",
            &port.to_string(),
        ])
        .env("PATH", path)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting flower-superlink");
    let link = SuperLink { child, port };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the SuperLink did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    link
}

#[test]
fn a_pupil_node_joins_a_flower_superlink() {
    let link = superlink();
    let address = format!("127.0.0.1:{}", link.port);
    let dir = tempfile::tempdir().unwrap();
    let node = FleetClient::new(
        &address,
        NodeKey::load_or_create(&dir.path().join("a.key")).unwrap(),
    );
    let id = node.register_node().unwrap();
    assert!(id > 0);
    assert_eq!(node.activate_node(30.0).unwrap(), id);
    assert!(node.heartbeat(id, 30.0).unwrap());
    let pulled = node.pull_messages(id).unwrap();
    assert!(pulled.messages_list.is_empty(), "no run was started");

    // The same key file is the same node: while it is online it cannot be activated twice;
    // after it went offline, a restarted node with that file comes back with the same id.
    let again = FleetClient::new(
        &address,
        NodeKey::load_or_create(&dir.path().join("a.key")).unwrap(),
    );
    assert!(matches!(
        again.activate_node(30.0),
        Err(FleetError::Refused { status: 412, .. })
    ));
    node.deactivate_node(id).unwrap();
    assert_eq!(again.activate_node(30.0).unwrap(), id);
    assert!(again.heartbeat(id, 30.0).unwrap());

    // Another key may not speak for this node.
    let other = FleetClient::new(&address, NodeKey::generate().unwrap());
    match other.heartbeat(id, 30.0) {
        Err(FleetError::Refused { status: 401, .. }) => {}
        other => panic!("a heartbeat for another node's id must be refused: {other:?}"),
    }
    let other_id = other.register_node().unwrap();
    assert_ne!(other_id, id);

    node.deactivate_node(id).unwrap();
    node.unregister_node(id).unwrap();
    assert!(
        node.heartbeat(id, 30.0).is_err(),
        "an unregistered node has no heartbeat"
    );
}
