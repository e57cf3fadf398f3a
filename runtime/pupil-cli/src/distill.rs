//! `pupil distill`: train a small student from a teacher. A classifier teacher teaches a
//! student classifier its temperature-softened logits on MNIST's training images (the student
//! is written with anchor examples for replay); a sentence encoder teacher (BERT) teaches a
//! shallower copy of itself its embeddings on unlabelled text (see `distill_encoder`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::mnist::Mnist;
use pupil::format::{DType, ModelFile};
use pupil::import::load_model;
use pupil::models::classifier::{Arch, ClassifierSpec, Model, Train};
use pupil::refine::distill::{distill, teacher_logits, DistillConfig, EpochReport};
use pupil::refine::replay::Anchors;
use pupil::train;
use pupil::Backend;

use crate::CliResult;

/// Distil a student from a teacher: a classifier (KL on softened logits) or a sentence
/// encoder (cosine on embeddings of unlabelled text).
///
/// Classifier teacher (.pupil classifier): the student (--student mlp|cnn) learns the
/// teacher's temperature-softened logits plus the labels on MNIST's 60,000 training images:
///
///   pupil distill --teacher cnn.pupil --out student.pupil
///
/// Encoder teacher (a BERT sentence encoder, e.g. all-MiniLM-L6-v2 from `pupil convert`):
/// the student keeps the teacher's embeddings and --layers of its layers (--pick: by a probe,
/// evenly, or listed), and learns the teacher's sentence embeddings and token states
/// (1 - cosine) on the sentences of the --text files (and --train-text files), then polishes
/// on the sentence embeddings alone (--polish-epochs); the last --held-out fraction of each
/// --text file is never trained on and gives the held-out mean cosine. The student is a .pupil file
/// that `pupil embed` loads:
///
///   pupil distill --teacher minilm.pupil --text news.txt --text play.txt --out student.pupil
#[derive(clap::Parser)]
pub struct Args {
    /// The teacher: a .pupil classifier (e.g. the CNN from `cargo run --release --example
    /// mnist -- --model cnn --save cnn.pupil`) or a BERT sentence encoder (from `pupil
    /// convert` of a sentence-transformers checkpoint).
    #[arg(long)]
    pub(crate) teacher: PathBuf,
    /// Where to write the student.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Passes over the training data [default: 10 for classifiers, 6 for encoders].
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Examples per step [default: 128 images for classifiers, 32 sentences for encoders].
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// AdamW learning rate [default: 1e-3 for classifiers, 5e-4 for encoders].
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// Learning-rate multiplier after each epoch.
    #[arg(long, default_value_t = 0.8)]
    pub(crate) lr_decay: f32,
    /// Seed of the student's initial weights, shuffling and anchors.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    pub(crate) adapter: Option<String>,

    /// Classifiers: the student's architecture, mlp (784-200-200-10) or cnn.
    #[arg(long, default_value = "mlp", help_heading = "Classifier teachers")]
    pub(crate) student: String,
    /// Classifiers: softmax temperature T of the distillation loss.
    #[arg(long, default_value_t = 4.0, help_heading = "Classifier teachers")]
    pub(crate) temperature: f32,
    /// Classifiers: weight of the distillation term; 1 - alpha goes to cross-entropy on the
    /// true labels.
    #[arg(long, default_value_t = 0.9, help_heading = "Classifier teachers")]
    pub(crate) alpha: f32,
    /// Classifiers: anchor examples to ship in the file for replay and the quality gate (0:
    /// none).
    #[arg(long, default_value_t = 1000, help_heading = "Classifier teachers")]
    pub(crate) anchors: usize,
    /// Classifiers: storage of the student's weights, f32 or f16.
    #[arg(long, default_value = "f32", help_heading = "Classifier teachers")]
    pub(crate) dtype: String,

    /// Encoders: unlabelled UTF-8 text to learn from (repeat for several files), split into
    /// sentences at . ! or ? (line breaks inside a sentence are joined).
    #[arg(long, help_heading = "Encoder teachers")]
    pub(crate) text: Vec<PathBuf>,
    /// Encoders: more unlabelled text that is only trained on (no held-out slice), next to
    /// the --text files the held-out cosine is measured on: a large general corpus
    /// (`models/fetch brown`) and more text of their own domain (`models/fetch plays` for a
    /// play) both help; see docs/refine.md.
    #[arg(long, help_heading = "Encoder teachers")]
    pub(crate) train_text: Vec<PathBuf>,
    /// Encoders: the student's layer count.
    #[arg(long, default_value_t = 3, help_heading = "Encoder teachers")]
    pub(crate) layers: usize,
    /// Encoders: which teacher layers start the student: `probe` (drop, one at a time, the
    /// layer whose removal leaves the copy closest to the teacher on 256 training sentences),
    /// `last` (evenly, ending on the last: 1,3,5 of 6), `first` (0,2,4) or a list like 0,4,5.
    #[arg(long, default_value = "probe", help_heading = "Encoder teachers")]
    pub(crate) pick: String,
    /// Encoders: start the student from the layers of this encoder instead of the teacher's
    /// (a larger student distilled before, to shrink in steps: 6 -> 4 -> 3 layers).
    #[arg(long, help_heading = "Encoder teachers")]
    pub(crate) from: Option<PathBuf>,
    /// Encoders: fraction of each text's sentences held out at its end for evaluation.
    #[arg(long, default_value_t = 0.15, help_heading = "Encoder teachers")]
    pub(crate) held_out: f64,
    /// Encoders: sentences with fewer words are skipped (speaker names, stage cues).
    #[arg(long, default_value_t = 4, help_heading = "Encoder teachers")]
    pub(crate) min_words: usize,
    /// Encoders: training sentences are truncated to this many tokens (held-out sentences
    /// are embedded whole, as `pupil embed` does).
    #[arg(long, default_value_t = 64, help_heading = "Encoder teachers")]
    pub(crate) max_len: usize,
    /// Encoders: weight of the token term, the mean 1 - cosine between the student's and the
    /// teacher's last hidden state of every token, added to the sentence term 1 - cosine
    /// (0: sentence embeddings only).
    #[arg(long, default_value_t = 1.0, help_heading = "Encoder teachers")]
    pub(crate) token_weight: f32,
    /// Encoders: epochs at the end that learn the sentence embeddings alone (no token term),
    /// with a fresh optimizer at --polish-lr (0: no polish).
    #[arg(long, default_value_t = 3, help_heading = "Encoder teachers")]
    pub(crate) polish_epochs: usize,
    /// Encoders: learning rate of the polish's first epoch (it decays by --lr-decay too).
    #[arg(long, default_value_t = 2e-4, help_heading = "Encoder teachers")]
    pub(crate) polish_lr: f32,
    /// Encoders: also train the word embedding table (frozen by default: it is most of the
    /// parameters and stays the teacher's).
    #[arg(long, help_heading = "Encoder teachers")]
    pub(crate) train_words: bool,
    /// Encoders: memory budget for training (weights, gradients, optimizer, activations),
    /// e.g. 1GB; batches that do not fit are split and their gradients accumulated.
    #[arg(long, default_value = "2GB", help_heading = "Encoder teachers")]
    pub(crate) memory_budget: String,
}

/// Distil from a classifier or an encoder, whichever the teacher is.
pub fn run(a: Args) -> CliResult {
    let teacher = load_model(&a.teacher)?;
    if teacher.info().arch.as_str() == "bert" {
        return crate::distill_encoder::run(&a, &teacher);
    }
    if !a.text.is_empty() || !a.train_text.is_empty() {
        return Err(format!(
            "--text and --train-text are for encoder teachers, and {} is a {:?} classifier",
            a.teacher.display(),
            teacher.info().arch.as_str()
        )
        .into());
    }
    classifier(a, &teacher)
}

/// Distil a classifier, report per epoch, write the student with anchors.
fn classifier(a: Args, teacher_file: &ModelFile) -> CliResult {
    let arch = Arch::from_name(&a.student).ok_or("--student: use mlp or cnn")?;
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => return Err(format!("--dtype {other:?}: use f32 or f16").into()),
    };
    let backend = Backend::auto(a.adapter.as_deref())?;
    println!("backend: {}", backend.describe());
    let data = crate::fetch::mnist()?;
    let teacher = Model::open(teacher_file, &backend, Train::All)?;
    let teacher_acc = train::accuracy(&teacher.net, &teacher.params, &data.test, 1000)?;
    println!(
        "teacher: {} test accuracy {:.2}%",
        teacher.spec.arch.name(),
        teacher_acc * 100.0
    );
    let bar = progress_bar(data.train.n, "{msg} [{bar:30}] {pos}/{len} eta {eta}")?;
    bar.set_message("teacher logits");
    let logits = teacher_logits(&teacher, &data.train, 500)?;
    bar.finish_and_clear();
    // The student reads what the teacher reads and predicts the same classes.
    let spec = ClassifierSpec::new(arch, &teacher.spec.input, teacher.classes());
    let student = Model::new(&teacher.model_id, &spec, &backend, a.seed)?;
    let cfg = DistillConfig {
        epochs: a.epochs.unwrap_or(10),
        batch: a.batch.unwrap_or(128),
        lr: a.lr.unwrap_or(1e-3),
        lr_decay: a.lr_decay,
        temperature: a.temperature,
        alpha: a.alpha,
        seed: a.seed,
    };
    let reports = distill_with_progress(&student, &data, &logits, &cfg)?;
    let mut b = student.to_builder(dtype, 1, None)?;
    b.created_by(&format!(
        "pupil distill: teacher {} (T={}, alpha={}, {} epochs)",
        teacher.spec.arch.name(),
        a.temperature,
        a.alpha,
        cfg.epochs
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

/// A progress bar over `len` examples drawn with `template`.
fn progress_bar(len: usize, template: &str) -> Result<ProgressBar, Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template(template)?.progress_chars("=> "));
    Ok(bar)
}

/// Trains `student` on `data`'s training images and the teacher's `logits`, with a progress
/// bar and a line per epoch (its loss and test accuracy).
fn distill_with_progress(
    student: &Model,
    data: &Mnist,
    logits: &[f32],
    cfg: &DistillConfig,
) -> Result<Vec<EpochReport>, Box<dyn std::error::Error>> {
    let bar = progress_bar(data.train.n, "epoch {msg} [{bar:30}] {pos}/{len} eta {eta}")?;
    let epoch = std::cell::Cell::new(1);
    let reports = distill(
        student,
        &data.train,
        logits,
        Some(&data.test),
        cfg,
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
    Ok(reports)
}
