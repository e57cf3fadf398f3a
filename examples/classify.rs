//! Load a model and run it: the shipped MNIST student classifies test digits.
//!
//!     cargo run --release --example classify
//!
//! Swap the embedded bytes for `ModelFile::open("your.pupil")` to run your own file.

use pupil::format::ModelFile;
use pupil::graph::Graph;
use pupil::models::classifier::{Model, Train};
use pupil::{Backend, Tensor};

// The repository's fetch tooling (`models/fetch` into the cache on first use); an app
// ships its data or downloads it its own way, and gives the library paths.
#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The best GPU adapter (or PUPIL_ADAPTER=cpu, or the CPU when there is none).
    let backend = Backend::auto(None)?;
    // Reading validates the whole file: magic, version, bounds, alignment, content hash.
    let file = ModelFile::from_bytes(include_bytes!("../models/mnist-student.pupil").to_vec())?;
    let model = Model::open(&file, &backend, Train::All)?;

    // Eight test digits as one batch of [8, 784] pixels in [0, 1].
    let test = fetch::mnist()?.test;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    test.batch_f32(&(0..8).collect::<Vec<_>>(), &mut pixels, &mut labels)?;
    let mut g = Graph::new(&backend);
    let x = g.input(Tensor::from_slice(
        &backend,
        &[8, model.spec.inputs()],
        &pixels,
    )?);
    let logits = model.logits(&mut g, x)?;
    let scores = g.value(logits).to_vec()?; // one read-back at the end

    let classes = model.classes();
    for (row, label) in scores.chunks(classes).zip(&labels) {
        let guess = (0..classes).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        println!("digit {label}: predicted {guess}");
    }
    let accuracy = pupil::train::accuracy(&model.net, &model.params, &test, 1000)?;
    println!(
        "test accuracy {:.2}% on {}",
        accuracy * 100.0,
        backend.describe()
    );
    Ok(())
}
