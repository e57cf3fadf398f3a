//! On-device refinement end to end: a session killed mid-run resumes from its checkpoint
//! and ends with exactly the weights of an uninterrupted run; the quality gate rolls back a
//! round that made the model worse; a memory budget that cannot fit is refused clearly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pupil::data::mnist::{self, Mnist};
use pupil::format::{DType, ModelFile};
use pupil::models::classifier::{Arch, ClassifierSpec, Model, Train};
use pupil::optim::{AdamWConfig, Optimizer, Rule};
use pupil::refine::replay::Anchors;
use pupil::refine::select::Uncertainty;
use pupil::refine::{Active, Eval, RefineConfig, Session};
use pupil::{train, Backend};

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

fn pupil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pupil"))
}

/// An MLP trained for one pass over 6,000 MNIST images on the CPU, with anchors.
fn small_model(mnist: &Mnist, path: &Path) -> Model {
    let spec = ClassifierSpec::new(Arch::Mlp, &mnist::SHAPE, mnist::CLASSES);
    let model = Model::new("mnist", &spec, &Backend::Cpu, 7).unwrap();
    let mut opt = Optimizer::new(&model.params, Rule::AdamW(AdamWConfig::default())).unwrap();
    let part = mnist.train.subset(&(0..6000).collect::<Vec<_>>());
    train::train_epoch(
        &model.net,
        &model.params,
        &mut opt,
        &part,
        64,
        1,
        100,
        |_, _| {},
    )
    .unwrap();
    let mut b = model.to_builder(DType::F32, 1, None).unwrap();
    Anchors::pick(&mnist.train, 400, 3)
        .add_to(&mut b, DType::Q8_0)
        .unwrap();
    b.write_atomic(path).unwrap();
    model
}

fn refine_args(model: &Path, data: &Path, ckpt: &Path, out: &Path) -> Vec<String> {
    [
        "refine",
        "--model",
        &model.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--strategy",
        "self,curriculum",
        "--threshold",
        "0.5",
        "--rounds",
        "3",
        "--epochs",
        "3",
        "--batch",
        "32",
        "--replay",
        "8",
        "--checkpoint",
        &ckpt.display().to_string(),
        "--checkpoint-every",
        "5",
        "--out",
        &out.display().to_string(),
        "--global",
        "false",
        "--adapter",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A device folder of `count` MNIST images in `style`, written by `pupil data shift`.
fn device_data(dir: &Path, style: &str, count: usize) -> PathBuf {
    let data = dir.join("device");
    let (count, out) = (count.to_string(), data.display().to_string());
    let args = [
        "data", "shift", "--style", style, "--count", &count, "--eval", "10", "--out", &out,
    ];
    run_ok(&args.map(String::from));
    data
}

fn run_ok(args: &[String]) -> String {
    let out = pupil().args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn killed_session_resumes_bit_for_bit() {
    let mnist = fetch::mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("student.pupil");
    small_model(&mnist, &model);
    let data = device_data(dir.path(), "rot=25,thick=1", 2000);
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    run_ok(&refine_args(
        &model,
        &data,
        &path("a.ckpt"),
        &path("a.pupil"),
    ));

    // Kill the second run with SIGKILL as soon as a mid-round checkpoint exists.
    let mut child = pupil()
        .args(refine_args(
            &model,
            &data,
            &path("b.ckpt"),
            &path("b.pupil"),
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let mid_round = std::fs::read(path("b.ckpt"))
            .ok()
            .and_then(|bytes| pupil::refine::checkpoint::Checkpoint::from_bytes(&bytes).ok())
            .is_some_and(|c| c.step > 0);
        if mid_round {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !path("b.pupil").exists(),
        "the run finished before it could be killed"
    );

    let mut resume = refine_args(&model, &data, &path("b.ckpt"), &path("b.pupil"));
    resume.push("--resume".into());
    let text = run_ok(&resume);
    assert!(text.contains("resumed from"), "{text}");
    let (a, b) = (
        ModelFile::open(path("a.pupil")).unwrap(),
        ModelFile::open(path("b.pupil")).unwrap(),
    );
    assert_eq!(
        a.content_hash(),
        b.content_hash(),
        "resumed run differs from the uninterrupted one"
    );
}

#[test]
fn gate_rolls_back_a_harmful_round() {
    let mnist = fetch::mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("student.pupil");
    small_model(&mnist, &path);
    let file = ModelFile::open(&path).unwrap();
    let pool = mnist.test.subset(&(0..300).collect::<Vec<_>>());
    // A lying labeller at a high learning rate wrecks the model; an honest one at a gentle
    // rate does not.
    for (liar, kept, lr) in [(true, false, 1e-2), (false, true, 1e-4)] {
        let model = Model::open(&file, &Backend::Cpu, Train::All).unwrap();
        let before = model.params.trainable_values().unwrap().to_vec().unwrap();
        let cfg = RefineConfig {
            rounds: 1,
            epochs: 3,
            lr,
            self_training: None,
            active: Some(Active {
                per_round: 60,
                budget: 60,
                by: Uncertainty::Entropy,
            }),
            curriculum: None,
            replay: 0,
            oracle_weight: 10,
            tolerance: 0.02,
            ..RefineConfig::default()
        };
        let anchors = Anchors::from_file(&file).unwrap().unwrap();
        let mut session = Session::new(
            &model,
            file.content_hash(),
            &pool,
            true,
            anchors,
            cfg,
            Eval::default(),
            None,
        )
        .unwrap();
        // A lying labeller shifts every digit by one; an honest one tells the truth.
        let mut oracle = |picks: &[usize]| {
            picks
                .iter()
                .map(|&i| Some((usize::from(pool.labels[i]) + usize::from(liar)) % 10))
                .collect()
        };
        session
            .run(&mut oracle, &AtomicBool::new(false), &mut |_| {})
            .unwrap();
        let round = &session.history().rounds[0];
        assert_eq!(round.accepted, kept, "{}", round.reason);
        let after = model.params.trainable_values().unwrap().to_vec().unwrap();
        assert_eq!(
            after == before,
            !kept,
            "rollback must restore the weights exactly"
        );
    }
}

#[test]
fn budget_too_small_is_refused_with_advice() {
    let mnist = fetch::mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("student.pupil");
    small_model(&mnist, &model);
    let data = device_data(dir.path(), "rot=10", 50);
    let mut args = refine_args(
        &model,
        &data,
        &dir.path().join("c.ckpt"),
        &dir.path().join("c.pupil"),
    );
    args.extend(["--memory-budget".to_string(), "1MB".to_string()]);
    let out = pupil().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("memory budget is 1048576 bytes") && err.contains("--train head"),
        "{err}"
    );
    // LoRA on the head fits where full fine-tuning does not: weights and gradients shrink
    // to the frozen base plus the adapters.
    let mut args = refine_args(
        &model,
        &data,
        &dir.path().join("d.ckpt"),
        &dir.path().join("d.pupil"),
    );
    args.extend(["--memory-budget", "3MB", "--train", "lora:4"].map(String::from));
    let text = run_ok(&args);
    assert!(text.contains("memory plan:"), "{text}");
}
