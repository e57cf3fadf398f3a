//! A text classifier refined on the device: MiniLM (frozen) embeds Brown-corpus passages
//! (`models/fetch genres`, passages of three sentences labelled by genre, train and test
//! split by file); the shipped head was trained on six genres but saw only a handful of
//! romance passages. The device's own text is mostly romance. Its user labels 20 passages
//! (the oracle: the corpus' genre labels, standing in for a person who answers the 20
//! passages active selection picks), self-training pseudo-labels the rest of its unlabelled
//! pool, anchors from the shipped training set are replayed, and the head alone trains.
//! Local accuracy must rise by 10 points or more, and accuracy on the original held-out set
//! (balanced test passages) drop by 1 point at most; the refined head survives its file.

use std::sync::atomic::AtomicBool;

use pupil::data::{LabelledText, Split};
use pupil::format::ModelFile;
use pupil::import::{import_file, Target};
use pupil::models::bert::SentenceEncoder;
use pupil::models::classifier::Train;
use pupil::models::text_classifier::{features, TextClassifier};
use pupil::refine::replay::Anchors;
use pupil::refine::select::{SelfTraining, Uncertainty};
use pupil::refine::{Active, Eval, RefineConfig, Session};
use pupil::Backend;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

const CLASSES: [&str; 5] = ["hobbies", "learned", "news", "religion", "romance"];
/// The genre the shipped head saw little of and the device mostly has.
const SHIFTED: u32 = 4;

/// `per_class[c]` passages of each class `c` of `data`, drawn at random (seeded), skipping
/// those in `used` and adding the picks to it.
fn draw(data: &LabelledText, per_class: &[usize], used: &mut [bool], seed: u64) -> LabelledText {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picks = Vec::new();
    for (c, &n) in per_class.iter().enumerate() {
        let mut of: Vec<usize> = data
            .of_class(c as u32)
            .into_iter()
            .filter(|&i| !used[i])
            .collect();
        of.shuffle(&mut rng);
        assert!(
            of.len() >= n,
            "{} has {} passages, {n} wanted",
            CLASSES[c],
            of.len()
        );
        picks.extend_from_slice(&of[..n]);
    }
    for &i in &picks {
        used[i] = true;
    }
    picks.shuffle(&mut rng);
    data.subset(&picks)
}

fn embed(encoder: &SentenceEncoder, data: &LabelledText) -> Split {
    features(encoder, &data.texts, &data.labels, 32, |_| {}).unwrap()
}

#[test]
fn shifted_device_gains_ten_points_and_keeps_the_original_task() {
    let backend = Backend::Cpu;
    let path = fetch::cached("minilm", "model.safetensors").expect("fetching MiniLM");
    let imported = import_file(&path, "minilm", Target::Keep).unwrap();
    let encoder_file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    let encoder = SentenceEncoder::load(&encoder_file, &backend).unwrap();
    let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
    let train = LabelledText::read(
        &fetch::cached("genres", "train.tsv").unwrap(),
        Some(&classes),
    )
    .unwrap();
    let test = LabelledText::read(
        &fetch::cached("genres", "test.tsv").unwrap(),
        Some(&classes),
    )
    .unwrap();

    // What shipped: a head trained on 200 passages of each genre but 6 of romance.
    let mut used = vec![false; train.texts.len()];
    let shipped_data = embed(
        &encoder,
        &draw(&train, &[200, 200, 200, 200, 6], &mut used, 1),
    );
    // The device: 360 unlabelled passages of its own, 200 of them romance; its test set alike.
    let pool = embed(
        &encoder,
        &draw(&train, &[40, 40, 40, 40, 200], &mut used, 2),
    );
    let mut used_test = vec![false; test.texts.len()];
    let local_text = draw(&test, &[20, 20, 20, 20, 100], &mut used_test, 3);
    let local = embed(&encoder, &local_text);
    // The original task's held-out set: balanced test passages from other files' slices.
    let global = embed(&encoder, &draw(&test, &[40; 5], &mut used_test, 4));

    let shipped = TextClassifier::new(
        "genres",
        &encoder_file,
        &encoder,
        classes,
        &[128],
        &backend,
        7,
    )
    .unwrap();
    shipped.fit(&shipped_data, 40, 1e-2, 11).unwrap();
    let anchors = Anchors::pick(&shipped_data, 160, 5);
    let file = ModelFile::from_bytes(
        shipped
            .to_builder(Some(&anchors), 1, None)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
    .unwrap();

    // On the device: open the shipped head (the encoder stays frozen), refine on local text.
    let device = TextClassifier::open(&file, &encoder_file, &backend, Train::All).unwrap();
    let (local0, global0) = (
        device.accuracy(&local).unwrap(),
        device.accuracy(&global).unwrap(),
    );
    let cfg = RefineConfig {
        rounds: 2,
        epochs: 6,
        batch: 64,
        lr: 1e-3,
        self_training: Some(SelfTraining {
            threshold: 0.9,
            ..Default::default()
        }),
        active: Some(Active {
            per_round: 10,
            budget: 20,
            by: Uncertainty::Margin,
        }),
        curriculum: None,
        replay: 16,
        oracle_weight: 4,
        tolerance: 0.01,
        memory_budget: None,
        checkpoint_every: 0,
        seed: 3,
    };
    let eval = Eval {
        local: Some(&local),
        global: Some(&global),
        gate_local: None,
    };
    let anchors = Anchors::from_file(&file).unwrap().unwrap();
    let mut session = Session::new(
        &device.head,
        file.content_hash(),
        &pool,
        true,
        anchors,
        cfg,
        eval,
        None,
    )
    .unwrap();
    let mut asked = 0;
    let mut oracle = |picks: &[usize]| {
        asked += picks.len();
        picks
            .iter()
            .map(|&i| Some(usize::from(pool.labels[i])))
            .collect()
    };
    session
        .run(&mut oracle, &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    let history = session.history().clone();
    drop(session);
    let (local1, global1) = (
        device.accuracy(&local).unwrap(),
        device.accuracy(&global).unwrap(),
    );
    eprintln!(
        "text classifier: local {:.1}% -> {:.1}%, original held-out {:.1}% -> {:.1}%, {asked} labels, rounds {:?}",
        local0 * 100.0,
        local1 * 100.0,
        global0 * 100.0,
        global1 * 100.0,
        history
            .rounds
            .iter()
            .map(|r| (r.pseudo_labels, r.pseudo_label_accuracy, r.accepted))
            .collect::<Vec<_>>()
    );
    assert_eq!(asked, 20, "the user labels 20 passages");
    assert!(local1 >= local0 + 0.10, "local {local0} -> {local1}");
    assert!(global1 >= global0 - 0.01, "held-out {global0} -> {global1}");
    // Classifying raw text gives the same answers as the embedded examples.
    let names = device.classify(&encoder, &local_text.texts).unwrap();
    let right = names
        .iter()
        .zip(&local_text.labels)
        .filter(|(n, &y)| **n == CLASSES[y as usize])
        .count();
    assert_eq!(right as f32 / names.len() as f32, local1);

    // The refined head as a file opens again on the same encoder only, with the same answers.
    let refined = ModelFile::from_bytes(
        device
            .to_builder(None, 2, Some(file.content_hash()))
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    let back = TextClassifier::open(&refined, &encoder_file, &backend, Train::All).unwrap();
    assert_eq!(back.accuracy(&local).unwrap(), local1);
    assert_eq!(back.classes[SHIFTED as usize], "romance");
    assert!(TextClassifier::open(&refined, &file, &backend, Train::All).is_err());
}
