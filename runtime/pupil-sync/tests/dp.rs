//! pupil's RDP accountant against Google's dp-accounting (tests/reference/dp_epsilon.json,
//! written by tests/reference/dp_epsilon.py with dp-accounting 0.6.0).

use pupil_sync::dp::RdpAccountant;
use serde_json::Value;

#[test]
fn the_accountant_matches_dp_accounting() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/dp_epsilon.json"
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let (mut worst, mut worst_rdp) = (0.0f64, 0.0f64);
    for c in cases {
        let f = |k: &str| c[k].as_f64().unwrap();
        let orders: Vec<f64> = c["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_f64().unwrap())
            .collect();
        assert_eq!(orders, pupil_sync::dp::rdp::default_orders());
        let mut acc = RdpAccountant::new(orders);
        acc.compose_sampled_gaussian(f("q"), f("noise"), f("steps") as u64)
            .unwrap();
        // Every order: a series dp-accounting gives up on (null) diverges here too.
        for ((order, rdp), want) in acc.spent().zip(c["rdp"].as_array().unwrap()) {
            match want.as_f64() {
                Some(w) => {
                    let rel = (rdp - w).abs() / w.abs().max(1e-300);
                    worst_rdp = worst_rdp.max(rel);
                    assert!(rel < 1e-9, "order {order}: {rdp} against {w}");
                }
                None => assert_eq!(rdp, f64::INFINITY, "order {order}"),
            }
        }
        let (eps, order) = acc.epsilon(f("delta")).unwrap();
        let rel = (eps - f("epsilon")).abs() / f("epsilon");
        worst = worst.max(rel);
        assert!(rel < 1e-9, "{c:?}: epsilon {eps} at order {order}");
        assert_eq!(order, f("order"), "{eps}");
    }
    println!("worst relative difference: epsilon {worst:.1e}, RDP {worst_rdp:.1e}");
}
