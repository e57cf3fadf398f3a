//! Hostile inputs against a real server: each gets its own status and error
//! kind, and none changes the model or the stored updates.

mod common;

use common::*;
use pupil_sync::client::Client;
use pupil_sync::server::ServerConfig;
use pupil_sync::KeyPair;

/// Posts an envelope to /v1/updates and checks status and kind.
fn expect(url: &str, bytes: &[u8], status: u16, kind: &str) {
    let (got, json) = post(&format!("{url}/v1/updates"), bytes, None);
    assert_eq!(
        (got, json["error"].as_str().unwrap_or("")),
        (status, kind),
        "{json}"
    );
    assert!(
        json["message"].as_str().is_some_and(|m| m.len() > 20),
        "{json}"
    );
}

#[test]
fn every_hostile_update_gets_its_own_rejection_and_changes_nothing() {
    let t = start(ServerConfig {
        max_norm: 100.0,
        max_body: 64 * 1024,
        ..quiet()
    });
    let url = &t.url;
    let alice = KeyPair::from_seed([1; 32]);
    let bob = KeyPair::from_seed([2; 32]);
    let mallory = KeyPair::from_seed([3; 32]);
    let client = Client::new(url);
    client.register("alice", &alice, Some(TOKEN)).unwrap();
    client.register("bob", &bob, Some(TOKEN)).unwrap();
    let before = t.server.current_meta().unwrap();
    let base = base_hash();
    let good = body("alice", 1, base, &[("b", &[3], &[0.1, 0.1, 0.1])]);

    expect(url, b"certainly not an update", 400, "malformed");
    expect(url, &signed(&alice, &good)[..40], 400, "malformed");
    expect(url, &vec![7u8; 100 * 1024], 413, "too_large");
    expect(url, &signed(&mallory, &good), 401, "unknown_device");
    let mut forged = signed(&alice, &good);
    let sig_at = forged.len() - 8 - 64;
    forged[sig_at] ^= 1;
    expect(url, &forged, 401, "bad_signature");
    let mut tampered_body = good.clone();
    *tampered_body.last_mut().unwrap() ^= 0x40;
    let mut tampered = signed(&alice, &good);
    let start_of_body = tampered.len() - 72 - good.len();
    tampered[start_of_body..start_of_body + good.len()].copy_from_slice(&tampered_body);
    expect(url, &tampered, 401, "bad_signature");
    expect(url, &signed(&bob, &good), 403, "device_mismatch");
    expect(
        url,
        &signed(
            &alice,
            &body("alice", 2, [9; 32], &[("b", &[3], &[0.1; 3])]),
        ),
        409,
        "unknown_base",
    );
    expect(
        url,
        &signed(
            &alice,
            &body("alice", 3, base, &[("w", &[3, 2], &[0.1; 6])]),
        ),
        422,
        "wrong_shape",
    );
    expect(
        url,
        &signed(&alice, &body("alice", 4, base, &[("zz", &[1], &[0.1])])),
        422,
        "unknown_tensor",
    );
    expect(
        url,
        &signed(&alice, &body("alice", 5, base, &[("b", &[3], &[1e4; 3])])),
        422,
        "norm_too_large",
    );
    let mut nan = body("alice", 6, base, &[("b", &[3], &[1234.0, 0.0, 0.0])]);
    let at = nan
        .windows(2)
        .position(|w| w == half_bytes(1234.0))
        .unwrap();
    nan[at..at + 2].copy_from_slice(&[0x00, 0x7e]);
    expect(url, &signed(&alice, &nan), 422, "non_finite");
    let mut other_model = body("alice", 7, base, &[("b", &[3], &[0.1; 3])]);
    let m = other_model.windows(4).position(|w| w == b"tiny").unwrap();
    other_model[m..m + 4].copy_from_slice(b"huge");
    expect(url, &signed(&alice, &other_model), 422, "wrong_model");

    // The valid update is accepted once; a replay is a duplicate, a changed replay a conflict.
    let (s, j) = post(&format!("{url}/v1/updates"), &signed(&alice, &good), None);
    assert_eq!((s, j["status"].as_str()), (200, Some("accepted")));
    let (s, j) = post(&format!("{url}/v1/updates"), &signed(&alice, &good), None);
    assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")));
    let changed = body("alice", 1, base, &[("b", &[3], &[0.2, 0.1, 0.1])]);
    expect(url, &signed(&alice, &changed), 409, "seq_conflict");

    assert_eq!(
        t.server.current_meta().unwrap(),
        before,
        "the model must not change"
    );
    assert_eq!(
        t.server.store().update_keys().unwrap(),
        [("alice".to_owned(), 1)]
    );
    let counters = t.server.counters();
    assert_eq!(counters["accepted"], 1);
    assert_eq!(counters["duplicate"], 1);
    assert_eq!(counters["rejected.bad_signature"], 2);
}

/// The little-endian f16 bytes of `x`.
fn half_bytes(x: f32) -> [u8; 2] {
    let e = pupil_wire::update::EncodedDelta::f16("x", &[1], &[x]).unwrap();
    match e.encoding {
        pupil_wire::update::OwnedEncoding::F16(v) => [v[0], v[1]],
        _ => unreachable!(),
    }
}

#[test]
fn stale_updates_are_rejected_after_newer_versions() {
    let t = start(ServerConfig {
        max_staleness: 0,
        ..quiet()
    });
    let key = KeyPair::from_seed([5; 32]);
    Client::new(&t.url)
        .register("d", &key, Some(TOKEN))
        .unwrap();
    let base = base_hash();
    let first = signed(&key, &body("d", 1, base, &[("b", &[3], &[0.1; 3])]));
    assert_eq!(post(&format!("{}/v1/updates", t.url), &first, None).0, 200);
    assert_eq!(t.server.run_round().unwrap().unwrap().published, Some(2));
    let stale = signed(&key, &body("d", 2, base, &[("b", &[3], &[0.1; 3])]));
    expect(&t.url, &stale, 409, "stale_base");
}

#[test]
fn registration_and_admin_need_the_token() {
    let t = start(quiet());
    let key = KeyPair::from_seed([6; 32]);
    let c = Client::new(&t.url);
    let err = c.register("d", &key, Some("wrong")).unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    let err = c.register("bad id!", &key, Some(TOKEN)).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    c.register("d", &key, Some(TOKEN)).unwrap();
    c.register("d", &key, Some(TOKEN)).unwrap();
    let err = c
        .register("d", &KeyPair::from_seed([7; 32]), Some(TOKEN))
        .unwrap_err();
    assert!(err.to_string().contains("device_exists"), "{err}");
    let (s, j) = post(&format!("{}/v1/devices", t.url), b"{not json", Some(TOKEN));
    assert_eq!((s, j["error"].as_str()), (400, Some("malformed")));
    let (s, j) = post(&format!("{}/v1/rollback", t.url), br#"{"version":1}"#, None);
    assert_eq!((s, j["error"].as_str()), (401, Some("unauthorized")));
    let (s, j) = post(&format!("{}/v1/nowhere", t.url), b"", None);
    assert_eq!((s, j["error"].as_str()), (404, Some("not_found")));
}

/// A registration of `device` with `public_key`, answering `challenge` with
/// `signer`'s signature (issue 15.10).
fn registration(
    device: &str,
    public_key: &[u8; 32],
    challenge: &serde_json::Value,
    signer: &KeyPair,
) -> Vec<u8> {
    let c: pupil_sync::protocol::Challenge = serde_json::from_value(challenge.clone()).unwrap();
    let message = c.registration_message(device, public_key).unwrap();
    serde_json::json!({
        "device_id": device,
        "public_key": pupil_sync::hex::encode(public_key),
        "challenge": challenge,
        "signature": pupil_sync::hex::encode(&signer.sign(&message)),
    })
    .to_string()
    .into_bytes()
}

/// Posts `body` to `url` and asserts the answer is a refusal with `status` and
/// error `kind`; returns the answer's message.
fn refused(url: &str, body: &[u8], status: u16, kind: &str) -> String {
    let (s, j) = post(url, body, None);
    assert_eq!((s, j["error"].as_str()), (status, Some(kind)), "{j}");
    j["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn registering_a_key_needs_its_private_key_and_a_fresh_challenge() {
    let t = start(ServerConfig {
        open_registration: true,
        ..quiet()
    });
    let devices = format!("{}/v1/devices", t.url);
    let victim = KeyPair::from_seed([21; 32]);
    let mallory = KeyPair::from_seed([22; 32]);
    let fresh = || signed_request(&t.url, "GET", "/v1/challenge", None, 0, b"").1;
    let victim_hex = pupil_sync::hex::encode(&victim.public());
    let stolen = |challenge: &serde_json::Value, signer: &KeyPair| {
        registration("stolen", &victim.public(), challenge, signer)
    };

    // Registering the victim's public key without proof, as before: refused.
    let bare = serde_json::json!({ "device_id": "stolen", "public_key": victim_hex });
    let (s, j) = post(&devices, bare.to_string().as_bytes(), None);
    assert!((400..500).contains(&s), "{s} {j}");
    // With a challenge signed by Mallory's key instead of the victim's: refused.
    refused(&devices, &stolen(&fresh(), &mallory), 401, "bad_signature");
    // A challenge this server never issued, or one past its expiry: refused.
    let mut made_up = fresh();
    made_up["nonce"] = serde_json::json!("00".repeat(16));
    refused(&devices, &stolen(&made_up, &victim), 401, "bad_challenge");
    let mut expired = fresh();
    expired["expires_unix"] = serde_json::json!(now() - 1);
    refused(&devices, &stolen(&expired, &victim), 401, "bad_challenge");
    assert_eq!(
        t.server.store().device_for_key(&victim.key_id()).unwrap(),
        None,
        "nobody registered the victim's key"
    );

    // The victim registers with its own signature; replaying that request is refused,
    // and so is its challenge under another id.
    let challenge = fresh();
    let own = registration("victim", &victim.public(), &challenge, &victim);
    let (s, j) = post(&devices, &own, None);
    assert_eq!((s, j["status"].as_str()), (201, Some("registered")), "{j}");
    let message = refused(&devices, &own, 401, "bad_challenge");
    assert!(message.contains("used before"), "{message}");
    let other_id = registration("victim-2", &victim.public(), &challenge, &victim);
    refused(&devices, &other_id, 401, "bad_challenge");
    assert_eq!(
        t.server.store().device_for_key(&victim.key_id()).unwrap(),
        Some(("victim".to_owned(), victim.public()))
    );
    // The client does all of it in one call.
    Client::new(&t.url)
        .register("mallory", &mallory, None)
        .unwrap();
}
