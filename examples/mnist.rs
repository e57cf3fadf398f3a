//! Train an MNIST classifier on the GPU path (or the CPU with `--adapter cpu`):
//!
//!     cargo run --release --example mnist -- --model mlp
//!
//! Prints per-epoch loss and test accuracy, and ends with `test_accuracy=<value>`;
//! `--save model.pupil` keeps the classifier (rewritten after every epoch), e.g. as the
//! teacher for `pupil distill`.

// The repository's fetch tooling (`models/fetch` into the cache on first use); an app
// ships its data or downloads it its own way, and gives the library paths.
#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::mnist;
use pupil::format::{DType, ModelFile};
use pupil::models::classifier::{Arch, ClassifierSpec, Model, Train};
use pupil::optim::{AdamWConfig, Optimizer, Rule};
use pupil::train;

#[derive(Parser)]
#[command(about = "Train an MNIST classifier with pupil and report test accuracy")]
struct Args {
    /// Architecture: mlp (784-200-200-10) or cnn.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Multiply the learning rate by this after every epoch.
    #[arg(long, default_value_t = 1.0)]
    lr_decay: f32,
    /// Adapter (name, backend or `cpu`); default: PUPIL_ADAPTER or the best GPU.
    #[arg(long)]
    adapter: Option<String>,
    /// Random seed for initialisation and shuffling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the trained classifier to this `.pupil` file.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    /// Start from this classifier's weights instead of a random initialisation.
    #[arg(long)]
    init: Option<std::path::PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let arch = Arch::from_name(&args.model)
        .ok_or_else(|| format!("unknown model {:?}: use mlp or cnn", args.model))?;
    let backend = pupil::Backend::auto(args.adapter.as_deref())?;
    println!("backend: {}", backend.describe());
    let data = fetch::mnist()?;
    let model = match &args.init {
        Some(path) => Model::open(&ModelFile::open(path)?, &backend, Train::All)?,
        None => {
            let spec = ClassifierSpec::new(arch, &mnist::SHAPE, mnist::CLASSES);
            Model::new("mnist", &spec, &backend, args.seed)?
        }
    };
    if model.spec.arch != arch {
        return Err(format!(
            "--init holds a {} classifier, not {}",
            model.spec.arch.name(),
            arch.name()
        )
        .into());
    }
    let (net, params) = (&model.net, &model.params);
    println!(
        "model: {} ({} parameters)",
        arch.name(),
        params.count(false)
    );
    let mut opt = Optimizer::new(
        params,
        Rule::AdamW(AdamWConfig {
            lr: args.lr,
            ..Default::default()
        }),
    )?;
    let mut accuracy = 0.0;
    for epoch in 1..=args.epochs {
        let bar = ProgressBar::new(data.train.n as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")?
                .progress_chars("=> "),
        );
        bar.set_message(format!("{epoch}/{}", args.epochs));
        if let Rule::AdamW(c) = opt.rule_mut() {
            c.lr = args.lr * args.lr_decay.powi(epoch as i32 - 1);
        }
        let start = Instant::now();
        let loss = train::train_epoch(
            net,
            params,
            &mut opt,
            &data.train,
            args.batch,
            args.seed + epoch as u64,
            20,
            |done, loss| {
                bar.set_position(done as u64);
                bar.set_message(format!("{epoch}/{} loss {loss:.4}", args.epochs));
            },
        )?;
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f32();
        accuracy = train::accuracy(net, params, &data.test, 1000)?;
        println!(
            "epoch {epoch:>2}  loss {loss:.4}  test accuracy {:.2}%  ({secs:.1} s, {:.0} images/s)",
            accuracy * 100.0,
            data.train.n as f32 / secs
        );
        if let Some(path) = &args.save {
            model.save(path, DType::F32, 1, None)?;
            println!("saved {}", path.display());
        }
    }
    println!("test_accuracy={accuracy:.4}");
    Ok(())
}
