//! On-device refinement end to end, on every shape of data the fetch script provides (MNIST
//! and Fashion-MNIST, 28 x 28 and 10 classes; scikit-learn's 8 x 8 digits): the strategies
//! lift a shifted device's accuracy; a session killed mid-run resumes from its checkpoint
//! and ends with exactly the weights of an uninterrupted run; the quality gate rolls back a
//! round that made the model worse; a memory budget that cannot fit is refused clearly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pupil::data::{Dataset, Split};
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

/// A data set the tests run on and how its device differs.
struct Case {
    /// `pupil data shift --from` name.
    name: &'static str,
    /// Training examples the small model sees, and its epochs over them.
    train: usize,
    epochs: usize,
    /// The device's style and pool size.
    style: &'static str,
    pool: usize,
    /// Steps between checkpoints in the kill test (small sets train fast: checkpoint often,
    /// so the run is still going when it is killed).
    checkpoint_every: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "mnist",
        train: 6000,
        epochs: 1,
        style: "rot=25,thick=1",
        pool: 2000,
        checkpoint_every: 5,
    },
    Case {
        name: "fashion",
        train: 6000,
        epochs: 3,
        style: "dx=3,dy=2",
        pool: 2000,
        checkpoint_every: 5,
    },
    Case {
        name: "digits",
        train: 1500,
        epochs: 4,
        style: "rot=10",
        pool: 1000,
        checkpoint_every: 1,
    },
];

/// An MLP of the data's shape and classes, trained briefly on the CPU, with anchors.
fn small_model(case: &Case, data: &Dataset, path: &Path) -> Model {
    let spec = ClassifierSpec::new(Arch::Mlp, &data.train.shape, data.train.classes());
    let model = Model::new(case.name, &spec, &Backend::Cpu, 7).unwrap();
    let mut opt = Optimizer::new(&model.params, Rule::AdamW(AdamWConfig::default())).unwrap();
    let part = data.train.subset(&(0..case.train).collect::<Vec<_>>());
    for epoch in 0..case.epochs {
        train::train_epoch(
            &model.net,
            &model.params,
            &mut opt,
            &part,
            64,
            1 + epoch as u64,
            100,
            |_, _| {},
        )
        .unwrap();
    }
    let mut b = model.to_builder(DType::F32, 1, None).unwrap();
    Anchors::pick(&data.train, 400, 3)
        .add_to(&mut b, DType::Q8_0)
        .unwrap();
    b.write_atomic(path).unwrap();
    model
}

fn refine_args(case: &Case, model: &Path, data: &Path, ckpt: &Path, out: &Path) -> Vec<String> {
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
        &case.checkpoint_every.to_string(),
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

/// A device folder of `count` images of `case`'s data set in `style`, with `eval` labelled
/// test images, written by `pupil data shift`.
fn device_data(dir: &Path, case: &Case, style: &str, count: usize, eval: usize) -> PathBuf {
    let data = dir.join("device");
    let (count, eval, out) = (
        count.to_string(),
        eval.to_string(),
        data.display().to_string(),
    );
    let args = [
        "data", "shift", "--from", case.name, "--style", style, "--count", &count, "--eval", &eval,
        "--out", &out,
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
    for case in &CASES {
        killed_session_resumes(case);
    }
}

fn killed_session_resumes(case: &Case) {
    let set = fetch::dataset(case.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("student.pupil");
    small_model(case, &set, &model);
    let data = device_data(dir.path(), case, case.style, case.pool, 10);
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    run_ok(&refine_args(
        case,
        &model,
        &data,
        &path("a.ckpt"),
        &path("a.pupil"),
    ));

    // Kill the second run with SIGKILL as soon as a mid-round checkpoint exists.
    let mut child = pupil()
        .args(refine_args(
            case,
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
        "{}: the run finished before it could be killed",
        case.name
    );

    let mut resume = refine_args(case, &model, &data, &path("b.ckpt"), &path("b.pupil"));
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
        "{}: resumed run differs from the uninterrupted one",
        case.name
    );
}

#[test]
fn gate_rolls_back_a_harmful_round() {
    for case in &CASES {
        gate_rolls_back(case);
    }
}

fn gate_rolls_back(case: &Case) {
    let set = fetch::dataset(case.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("student.pupil");
    small_model(case, &set, &path);
    let file = ModelFile::open(&path).unwrap();
    let classes = set.train.classes();
    let pool = set
        .test
        .subset(&(0..set.test.n.min(300)).collect::<Vec<_>>());
    // A lying labeller at a high learning rate wrecks the model; an honest one at a gentle
    // rate does not.
    for (liar, kept, lr) in [(true, false, 1e-2), (false, true, 3e-5)] {
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
            // The anchors' holdout is 100 examples: a point is one example.
            tolerance: 0.05,
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
        // A lying labeller shifts every class by one; an honest one tells the truth.
        let mut oracle = |picks: &[usize]| {
            picks
                .iter()
                .map(|&i| Some((usize::from(pool.labels[i]) + usize::from(liar)) % classes))
                .collect()
        };
        session
            .run(&mut oracle, &AtomicBool::new(false), &mut |_| {})
            .unwrap();
        let round = &session.history().rounds[0];
        assert_eq!(round.accepted, kept, "{}: {}", case.name, round.reason);
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
    let case = &CASES[0];
    let set = fetch::dataset(case.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("student.pupil");
    small_model(case, &set, &model);
    let data = device_data(dir.path(), case, "rot=10", 50, 10);
    let mut args = refine_args(
        case,
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
        case,
        &model,
        &data,
        &dir.path().join("d.ckpt"),
        &dir.path().join("d.pupil"),
    );
    args.extend(["--memory-budget", "3MB", "--train", "lora:4"].map(String::from));
    let text = run_ok(&args);
    assert!(text.contains("memory plan:"), "{text}");
}

#[test]
fn strategies_lift_a_shifted_device_on_every_data_set() {
    for case in &CASES {
        let set = fetch::dataset(case.name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("student.pupil");
        small_model(case, &set, &path);
        let data = device_data(dir.path(), case, case.style, case.pool, 250);
        let read = |name: &str| {
            pupil::data::idx::read_split(
                &data.join(format!("{name}images.idx")),
                Some(&data.join(format!("{name}labels.idx"))),
            )
            .unwrap()
        };
        let (pool, local): (Split, Split) = (read(""), read("eval-"));
        let file = ModelFile::open(&path).unwrap();
        let model = Model::open(&file, &Backend::Cpu, Train::All).unwrap();
        let cfg = RefineConfig {
            rounds: 2,
            epochs: 3,
            lr: 5e-4,
            active: Some(Active {
                per_round: 10,
                budget: 20,
                by: Uncertainty::Margin,
            }),
            replay: 16,
            ..RefineConfig::default()
        };
        let eval = Eval {
            local: Some(&local),
            global: Some(&set.test),
            gate_local: None,
        };
        let anchors = Anchors::from_file(&file).unwrap().unwrap();
        let mut session = Session::new(
            &model,
            file.content_hash(),
            &pool,
            true,
            anchors,
            cfg,
            eval,
            None,
        )
        .unwrap();
        let labels = pool.labels.clone();
        let mut oracle = |picks: &[usize]| {
            picks
                .iter()
                .map(|&i| Some(usize::from(labels[i])))
                .collect()
        };
        session
            .run(&mut oracle, &AtomicBool::new(false), &mut |_| {})
            .unwrap();
        let h = session.history();
        let last = h.rounds.last().unwrap();
        let (before, after) = (h.start.0.unwrap(), last.local_accuracy.unwrap());
        let (g0, g1) = (h.start.1.unwrap(), last.global_accuracy.unwrap());
        let gates: Vec<&str> = h.rounds.iter().map(|r| r.reason.as_str()).collect();
        eprintln!(
            "{}: local {:.1}% -> {:.1}%, original test set {:.1}% -> {:.1}% ({gates:?})",
            case.name,
            before * 100.0,
            after * 100.0,
            g0 * 100.0,
            g1 * 100.0
        );
        assert!(
            after >= before + 0.02,
            "{}: local {before} -> {after}",
            case.name
        );
        assert!(g1 >= g0 - 0.05, "{}: original {g0} -> {g1}", case.name);
    }
}
