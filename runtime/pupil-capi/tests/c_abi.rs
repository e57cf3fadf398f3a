//! A C program links the static library through `include/pupil.h`, classifies MNIST test
//! digits with the shipped student (the same classes as the Rust API), refuses a bad call
//! with a reason, takes a training step and queues a signed update that the outbox holds
//! and that carries int8 deltas of the student's weights.

use std::path::{Path, PathBuf};
use std::process::Command;

use pupil::data::mnist::Mnist;
use pupil_sync::client::Outbox;
use pupil_web::Classifier;
use pupil_wire::{Envelope, Update};

const DIGITS: usize = 16;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `libpupil_capi.a`, built (by cargo, which `cargo test` does not do for a staticlib)
/// beside this test's binary, in target/debug/.
fn static_lib() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "pupil-capi", "--lib"])
        .status()
        .unwrap();
    assert!(built.success(), "building the static library failed");
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("libpupil_capi.a")
}

#[test]
fn a_c_program_classifies_a_digit_and_queues_an_update() {
    let lib = static_lib();
    assert!(lib.exists(), "{} not built", lib.display());
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("classify_and_queue");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/classify_and_queue.c");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-O1"])
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg(&lib)
        .args(["-o"])
        .arg(&program)
        .args([
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lutil",
            "-lgcc_s",
            "-lc",
        ])
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let mnist = Mnist::load().expect("MNIST (models/fetch mnist)");
    let pixels: Vec<f32> = mnist.test.images[..DIGITS * 784]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    let labels = &mnist.test.labels[..DIGITS];
    let digits_path = dir.path().join("digits.f32");
    let labels_path = dir.path().join("labels.u8");
    std::fs::write(&digits_path, bytemuck_bytes(&pixels)).unwrap();
    std::fs::write(&labels_path, labels).unwrap();
    let model = root().join("models/mnist-student.pupil");
    let device = dir.path().join("device");
    let out = Command::new(&program)
        .arg(&model)
        .arg(&digits_path)
        .arg(&labels_path)
        .arg(&device)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");

    // The same classes as the Rust API on the CPU backend.
    let rust = Classifier::load(std::fs::read(&model).unwrap(), &pupil::Backend::Cpu).unwrap();
    let probs = pollster::block_on(rust.classify(&pixels)).unwrap();
    let classes: Vec<String> = probs
        .chunks(10)
        .map(|p| {
            let best = (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            best.to_string()
        })
        .collect();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("predictions"))
        .unwrap();
    assert_eq!(line, format!("predictions {}", classes.join(" ")));
    assert!(stdout.contains("refused: "), "{stdout}");
    assert!(stdout.contains("queued 1"), "{stdout}");

    let outbox = Outbox::open(&device.join("outbox")).unwrap();
    let status = outbox.status().unwrap();
    assert_eq!(status.queued.len(), 1, "{status:?}");
    let envelope = outbox.read(status.queued[0]).unwrap();
    let update = Update::parse(Envelope::parse(&envelope).unwrap().body).unwrap();
    assert_eq!((update.device_id, update.seq), ("c-app", 1));
    assert_eq!(update.num_examples, DIGITS as u64);
    assert!(
        update.deltas.iter().count() > 0,
        "the update carries deltas"
    );
}

/// The little-endian bytes of `values`.
fn bytemuck_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
