//! Refine on local data: the shipped student adapts to a device whose digits are rotated and
//! thickened, from unlabelled images plus a few labels the user gives, without forgetting.
//!
//!     cargo run --release --example refine_local

use std::sync::atomic::AtomicBool;

use pupil::data::shift::Style;
use pupil::format::ModelFile;
use pupil::models::classifier::{Model, Train};
use pupil::refine::replay::Anchors;
use pupil::refine::{Eval, Progress, RefineConfig, Session};
use pupil::Backend;

// The repository's fetch tooling (`models/fetch` into the cache on first use); an app
// ships its data or downloads it its own way, and gives the library paths.
#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::auto(None)?;
    let file = ModelFile::from_bytes(include_bytes!("../models/mnist-student.pupil").to_vec())?;
    let model = Model::open(&file, &backend, Train::All)?;
    // Anchor examples ship inside the model file: replayed in every batch, held out by the gate.
    let anchors = Anchors::from_file(&file)?.ok_or("the model carries no anchors")?;

    // The device's data: 1,000 unlabelled images in its own style, 500 labelled ones to measure.
    let mnist = fetch::mnist()?;
    let style = Style::parse("rot=25,thick=1")?;
    let pool = style.apply_split(&mnist.train.subset(&(0..1000).collect::<Vec<_>>()))?;
    let local_test = style.apply_split(&mnist.test.subset(&(0..500).collect::<Vec<_>>()))?;

    let cfg = RefineConfig {
        rounds: 2,
        ..RefineConfig::default()
    };
    let eval = Eval {
        local: Some(&local_test),
        global: Some(&mnist.test),
        gate_local: None,
    };
    let mut session = Session::new(
        &model,
        file.content_hash(),
        &pool,
        false,
        anchors,
        cfg,
        eval,
        None,
    )?;
    println!(
        "memory plan: {} bytes at most",
        session.plan().planned_bytes
    );

    // The app's labelling callback: a real app would ask its user; here the truth answers.
    let mut ask_user = |picks: &[usize]| {
        picks
            .iter()
            .map(|&i| Some(usize::from(pool.labels[i])))
            .collect()
    };
    session.run(&mut ask_user, &AtomicBool::new(false), &mut |p| {
        if let Progress::RoundEnd(r) = p {
            println!(
                "round {}: {} labels, {} pseudo-labels, gate: {}",
                r.round, r.labels, r.pseudo_labels, r.reason
            );
        }
    })?;
    let h = session.history();
    let last = h.rounds.last().ok_or("no rounds ran")?;
    let pct = |x: Option<f32>| x.unwrap_or(0.0) * 100.0;
    println!(
        "local accuracy {:.1}% -> {:.1}%",
        pct(h.start.0),
        pct(last.local_accuracy)
    );
    println!(
        "global accuracy {:.1}% -> {:.1}%",
        pct(h.start.1),
        pct(last.global_accuracy)
    );
    Ok(())
}
