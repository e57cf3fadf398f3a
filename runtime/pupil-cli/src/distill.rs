//! `pupil distill`: train a small student classifier from a teacher's temperature-softened
//! logits on MNIST's training images, and write it with anchor examples for replay.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::mnist::Mnist;
use pupil::format::{DType, ModelFile};
use pupil::models::classifier::{Arch, Model, Train};
use pupil::refine::distill::{distill, teacher_logits, DistillConfig};
use pupil::refine::replay::Anchors;
use pupil::train;
use pupil::Backend;

use crate::CliResult;

/// Arguments of `pupil distill`.
#[derive(clap::Args)]
pub struct Args {
    /// The teacher (.pupil classifier, e.g. the CNN from `cargo run --release --example
    /// mnist -- --model cnn --save cnn.pupil`).
    #[arg(long)]
    teacher: PathBuf,
    /// The student's architecture: mlp (784-200-200-10) or cnn.
    #[arg(long, default_value = "mlp")]
    student: String,
    /// Where to write the student.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Learning-rate multiplier after each epoch.
    #[arg(long, default_value_t = 0.8)]
    lr_decay: f32,
    /// Softmax temperature T of the distillation loss.
    #[arg(long, default_value_t = 4.0)]
    temperature: f32,
    /// Weight of the distillation term; 1 - alpha goes to cross-entropy on the true labels.
    #[arg(long, default_value_t = 0.9)]
    alpha: f32,
    /// Anchor examples to ship in the file for replay and the quality gate (0: none).
    #[arg(long, default_value_t = 1000)]
    anchors: usize,
    /// Storage of the student's weights: f32 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Seed of the student's initial weights, shuffling and anchors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
}

/// Distil, report per epoch, write the student.
pub fn run(a: Args) -> CliResult {
    let arch = Arch::from_name(&a.student).ok_or("--student: use mlp or cnn")?;
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => return Err(format!("--dtype {other:?}: use f32 or f16").into()),
    };
    let backend = Backend::auto(a.adapter.as_deref())?;
    println!("backend: {}", backend.describe());
    let data = Mnist::load()?;
    let teacher = Model::open(&ModelFile::open(&a.teacher)?, &backend, Train::All)?;
    let teacher_acc = train::accuracy(&teacher.net, &teacher.params, &data.test, 1000)?;
    println!(
        "teacher: {} test accuracy {:.2}%",
        teacher.arch.name(),
        teacher_acc * 100.0
    );
    let bar = ProgressBar::new(data.train.n as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")?
            .progress_chars("=> "),
    );
    bar.set_message("teacher logits");
    let logits = teacher_logits(&teacher, &data.train, 500)?;
    bar.finish_and_clear();
    let student = Model::new(arch, &backend, a.seed)?;
    let cfg = DistillConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        lr_decay: a.lr_decay,
        temperature: a.temperature,
        alpha: a.alpha,
        seed: a.seed,
    };
    let bar = ProgressBar::new(data.train.n as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} eta {eta}")?
            .progress_chars("=> "),
    );
    let epoch = std::cell::Cell::new(1);
    let reports = distill(
        &student,
        &data.train,
        &logits,
        Some(&data.test),
        &cfg,
        |done, loss| {
            bar.set_position(done as u64);
            bar.set_message(format!("{}/{} loss {loss:.4}", epoch.get(), cfg.epochs));
        },
        |r| {
            bar.suspend(|| {
                println!(
                    "epoch {:>2}  loss {:.4}  student test accuracy {:.2}%",
                    r.epoch,
                    r.loss,
                    r.accuracy.unwrap_or(0.0) * 100.0
                )
            });
            epoch.set(r.epoch + 1);
            bar.set_position(0);
        },
    )?;
    bar.finish_and_clear();
    let mut b = student.to_builder(dtype, 1, None)?;
    b.created_by(&format!(
        "pupil distill: teacher {} (T={}, alpha={}, {} epochs)",
        teacher.arch.name(),
        a.temperature,
        a.alpha,
        a.epochs
    ))?;
    if a.anchors > 0 {
        Anchors::pick(&data.train, a.anchors, a.seed).add_to(&mut b, DType::Q8_0)?;
    }
    b.write_atomic(&a.out)?;
    let acc = reports.last().and_then(|r| r.accuracy).unwrap_or(0.0);
    println!(
        "wrote {} ({} parameters, {} anchors); student test accuracy {:.2}% vs teacher {:.2}%",
        a.out.display(),
        student.params.count(false),
        a.anchors,
        acc * 100.0,
        teacher_acc * 100.0
    );
    Ok(())
}
