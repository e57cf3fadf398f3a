//! `pupil data shift`: write a simulated device's local images (a data set's, restyled by a
//! device-specific rotation, stroke thickness and offset) as IDX files for `pupil refine`.

use std::path::PathBuf;

use pupil::data::idx::write_split;
use pupil::data::shift::Style;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::CliResult;

/// `pupil data ...`
#[derive(clap::Subcommand)]
pub enum Data {
    /// Write a device's restyled images: `images.idx` (the unlabelled local pool, from the
    /// data set's training split), `labels.idx` (its true labels: only for answering
    /// active-selection queries and measuring), and `eval-images.idx` / `eval-labels.idx` (a
    /// labelled local test set from its test split).
    Shift(ShiftArgs),
}

/// Arguments of `pupil data shift`.
#[derive(clap::Args)]
pub struct ShiftArgs {
    /// The device's style, e.g. `rot=25,thick=1` (keys: rot degrees, thick passes, dx, dy).
    #[arg(long)]
    style: String,
    /// Images in the local pool.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Images in the local test set.
    #[arg(long, default_value_t = 2000)]
    eval: usize,
    /// The data set: mnist, fashion (Fashion-MNIST), digits (8 x 8), or a folder of
    /// `{train,test}-{images,labels}.idx` files.
    #[arg(long, default_value = "mnist")]
    from: String,
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Which images are drawn.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Dispatch `pupil data`.
pub fn run(cmd: Data) -> CliResult {
    match cmd {
        Data::Shift(a) => shift(a),
    }
}

fn shift(a: ShiftArgs) -> CliResult {
    let style = Style::parse(&a.style)?;
    std::fs::create_dir_all(&a.out).map_err(|e| {
        format!(
            "--out {}: cannot create the folder ({e}); choose a writable folder",
            a.out.display()
        )
    })?;
    let mnist = crate::fetch::dataset(&a.from)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut train: Vec<usize> = (0..mnist.train.n).collect();
    train.shuffle(&mut rng);
    let mut test: Vec<usize> = (0..mnist.test.n).collect();
    test.shuffle(&mut rng);
    if a.count > train.len() || a.eval > test.len() {
        return Err(format!(
            "at most {} pool and {} test images",
            train.len(),
            test.len()
        )
        .into());
    }
    let pool = style.apply_split(&mnist.train.subset(&train[..a.count]))?;
    let eval = style.apply_split(&mnist.test.subset(&test[..a.eval]))?;
    write_split(
        &pool,
        &a.out.join("images.idx"),
        Some(&a.out.join("labels.idx")),
    )?;
    write_split(
        &eval,
        &a.out.join("eval-images.idx"),
        Some(&a.out.join("eval-labels.idx")),
    )?;
    println!(
        "wrote {} pool and {} test images in style {style} to {}",
        a.count,
        a.eval,
        a.out.display()
    );
    Ok(())
}
