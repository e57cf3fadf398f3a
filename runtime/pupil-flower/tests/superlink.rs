//! Against a real Flower SuperLink (`flower-superlink --insecure` from `flwr==1.42.0`, in
//! the venv at `PUPIL_FLWR_VENV`, default `$PUPIL_CACHE/.flwr`, which tests/run makes): a
//! pupil node registers its key, activates, sends heartbeats, pulls (no run: no messages),
//! comes back with the same id from its key file after going offline, deactivates and
//! unregisters; a heartbeat signed by another key is refused with 401, and a second node
//! gets another id.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use pupil_flower::{FleetClient, FleetError, NodeKey};

#[path = "../../../tests/support/flwr.rs"]
mod flwr;
use flwr::{free_port, path_with_venv, venv_bin, wait_for_port, Proc};

/// A running SuperLink (killed with its SuperExec when dropped) and its port.
struct SuperLink {
    _proc: Proc,
    port: u16,
}

/// Starts `flower-superlink --insecure` on a free port with an in-memory state and waits
/// until it accepts connections.
fn superlink() -> SuperLink {
    let port = free_port();
    let child = Command::new(venv_bin().join("flower-superlink"))
        .args([
            "--insecure",
            "--database",
            ":memory:",
            "--port",
            &port.to_string(),
        ])
        .env("PATH", path_with_venv())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting flower-superlink");
    let link = SuperLink {
        _proc: Proc(child),
        port,
    };
    wait_for_port(port);
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
