//! `pupil distill` with a sentence encoder teacher: a shallower student started from the
//! teacher's own layers learns the teacher's embeddings of unlabelled sentences; a table
//! compares the student with the teacher on the training and held-out sentences before and
//! after training.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::sentences::{sentences, split_tail};
use pupil::format::ModelFile;
use pupil::models::bert::{BertConfig, SentenceEncoder};
use pupil::models::tokenizer::TextTokenizer;
use pupil::refine::distill_encoder::{
    teacher_targets, without_held_out, Distiller, EncoderDistillConfig, Schedule, Targets,
};
use pupil::refine::plan::{mib, parse_bytes};
use pupil::refine::student_layers::{cosines, evenly, mean, probe, student};
use pupil::Backend;
use pupil_wire::{MAX_CREATED_BY_LEN, MAX_ID_LEN};

use crate::distill::Args;
use crate::CliResult;

/// Sentences per batch when embedding (teacher targets and evaluation).
const EMBED_BATCH: usize = 32;

/// Training sentences the layer probe compares copies on.
const PROBE_SENTENCES: usize = 256;

/// Training sentences the report's training cosine is measured on (evenly spaced).
const REPORT_SENTENCES: usize = 2000;

/// One text's sentences: for training, and held out (the last `--held-out` fraction).
struct Sentences {
    name: String,
    train: Vec<String>,
    held: Vec<String>,
}

/// The teacher's embeddings of each text's held-out sentences.
type HeldEmbeddings = Vec<Vec<Vec<f32>>>;

/// Mean held-out cosines to the teacher: per text, and over all texts.
type HeldCosines = (Vec<f64>, f64);

/// One text's held-out sentences as token ids (whole, as `pupil embed` sees them).
struct Text {
    name: String,
    held: Vec<Vec<u32>>,
}

/// The teacher layers that start the student, from `--pick` (`probe` is handled apart).
fn picks(pick: &str, teacher: usize, layers: usize) -> Result<Vec<usize>, String> {
    match pick {
        "last" | "first" => evenly(teacher, layers, pick == "last").map_err(|e| e.to_string()),
        list => {
            let picked = list
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    format!("--pick {list:?}: use probe, last, first or a list like 0,4,5")
                })?;
            if picked.len() != layers {
                return Err(format!(
                    "--pick lists {} layers but --layers is {layers}",
                    picked.len()
                ));
            }
            Ok(picked)
        }
    }
}

/// Reads `path` and splits it into training and held-out sentences (the last `held_out`
/// fraction).
fn read_text(
    path: &Path,
    a: &Args,
    held_out: f64,
) -> Result<Sentences, Box<dyn std::error::Error>> {
    let body = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let all = sentences(&body, a.min_words);
    let (train, held) = split_tail(&all, held_out);
    if train.is_empty() {
        return Err(format!(
            "{} has no training sentences of {} words or more",
            path.display(),
            a.min_words
        )
        .into());
    }
    Ok(Sentences {
        name: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        train,
        held,
    })
}

/// `sentences` as token ids by `tok`.
fn token_ids(tok: &TextTokenizer, sentences: &[String]) -> pupil::Result<Vec<Vec<u32>>> {
    sentences.iter().map(|t| tok.encode(t)).collect()
}

/// `text` cut to at most `max` bytes at a character boundary (manifest strings are bounded).
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A progress bar over `len` items with a message.
fn bar(len: usize, template: &str) -> Result<ProgressBar, Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template(template)?.progress_chars("=> "));
    Ok(bar)
}

/// At most `most` evenly spaced training sentences (every `len.div_ceil(most)`-th) with their
/// target sentence embeddings.
fn evenly_spaced(
    train: &[Vec<u32>],
    targets: &Targets,
    most: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let step = train.len().div_ceil(most.max(1)).max(1);
    train
        .iter()
        .zip(&targets.sentences)
        .step_by(step)
        .map(|(ids, t)| (ids.clone(), t.clone()))
        .unzip()
}

/// Mean cosines of a student to the teacher: over a sample of the training sentences, over
/// each text's held-out sentences, and over all held-out sentences.
struct Cosines {
    train: f64,
    per_text: Vec<f64>,
    held_out: f64,
}

/// The held-out mean cosines of `enc`: per text, and over all texts.
fn held_out(
    enc: &SentenceEncoder,
    texts: &[Text],
    held_t: &[Vec<Vec<f32>>],
) -> pupil::Result<HeldCosines> {
    let mut all = Vec::new();
    let mut per = Vec::new();
    for (t, targets) in texts.iter().zip(held_t) {
        let c = cosines(enc, &t.held, targets, EMBED_BATCH)?;
        per.push(mean(&c));
        all.extend(c);
    }
    Ok((per, mean(&all)))
}

/// All mean cosines of `enc` (see [`Cosines`]): on the training sentences `sample` (with
/// their targets) and, unless already `known`, on the held-out ones.
fn measure(
    enc: &SentenceEncoder,
    sample: &(Vec<Vec<u32>>, Vec<Vec<f32>>),
    texts: &[Text],
    held_t: &[Vec<Vec<f32>>],
    known: Option<HeldCosines>,
) -> pupil::Result<Cosines> {
    let (per_text, held_out) = match known {
        Some(k) => k,
        None => held_out(enc, texts, held_t)?,
    };
    Ok(Cosines {
        train: mean(&cosines(enc, &sample.0, &sample.1, EMBED_BATCH)?),
        per_text,
        held_out,
    })
}

/// The layers of `source` that start the student: by `--pick`; a probe compares copies on
/// evenly spaced training sentences (never held-out ones).
fn choose_layers(
    a: &Args,
    source: &ModelFile,
    backend: &Backend,
    train: &[Vec<u32>],
    targets: &Targets,
) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    if a.pick != "probe" {
        return Ok(picks(
            &a.pick,
            BertConfig::from_model(source)?.layers,
            a.layers,
        )?);
    }
    let (ids, want) = evenly_spaced(train, targets, PROBE_SENTENCES);
    let t0 = Instant::now();
    let (layers, c) = probe(source, backend, a.layers, &ids, &want, |l, c| {
        println!("probe: layers {l:?} copied: mean cosine {c:.4}")
    })?;
    println!(
        "probe: keeping layers {layers:?} (mean cosine {c:.4} on {} training sentences, {:.1} s)",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(layers)
}

/// Prints the table of mean cosines before and after training (the training row on
/// `sampled` of the `train_n` training sentences).
fn report(
    a: &Args,
    texts: &[Text],
    [sampled, train_n]: [usize; 2],
    before: &Cosines,
    after: &Cosines,
) {
    println!("| sentences | count | before | after |\n| --- | --- | --- | --- |");
    let of = if sampled < train_n {
        format!("{sampled} of {train_n}")
    } else {
        train_n.to_string()
    };
    println!(
        "| train, all texts (at most {} tokens) | {of} | {:.4} | {:.4} |",
        a.max_len, before.train, after.train
    );
    for (i, t) in texts.iter().enumerate() {
        println!(
            "| held out: {} | {} | {:.4} | {:.4} |",
            t.name,
            t.held.len(),
            before.per_text[i],
            after.per_text[i]
        );
    }
    let held_n: usize = texts.iter().map(|t| t.held.len()).sum();
    println!(
        "| **held out, all texts** | {held_n} | {:.4} | **{:.4}** |",
        before.held_out, after.held_out
    );
}

/// The texts, read and tokenized: the training sentences (truncated to `--max-len`, none
/// equal to a held-out sentence) and each text's held-out sentences (whole).
struct Corpus {
    train: Vec<Vec<u32>>,
    texts: Vec<Text>,
    sources: usize,
}

impl Corpus {
    fn read(
        a: &Args,
        teacher_file: &ModelFile,
        teacher: &SentenceEncoder,
    ) -> Result<Corpus, Box<dyn std::error::Error>> {
        let texts = a
            .text
            .iter()
            .map(|p| read_text(p, a, a.held_out))
            .collect::<Result<Vec<_>, _>>()?;
        let extra = a
            .train_text
            .iter()
            .map(|p| read_text(p, a, 0.0))
            .collect::<Result<Vec<_>, _>>()?;
        let (train, repeats) = without_held_out(
            texts.iter().chain(&extra).flat_map(|t| &t.train),
            texts.iter().flat_map(|t| &t.held),
        );
        if repeats > 0 {
            println!("left out {repeats} training sentence(s) that are also held-out sentences");
        }
        let max_len = a.max_len.min(teacher.bert().config().max_seq_len);
        let truncating = TextTokenizer::from_model(teacher_file, Some(max_len))?;
        Ok(Corpus {
            train: token_ids(&truncating, &train)?,
            sources: texts.len() + extra.len(),
            texts: texts
                .into_iter()
                .map(|t| {
                    Ok(Text {
                        held: token_ids(teacher.tokenizer(), &t.held)?,
                        name: t.name,
                    })
                })
                .collect::<pupil::Result<Vec<_>>>()?,
        })
    }

    fn held_count(&self) -> usize {
        self.texts.iter().map(|t| t.held.len()).sum()
    }
}

/// The teacher's targets for the training sentences and its embeddings of each text's
/// held-out ones, with a progress bar.
fn teacher_embeddings(
    a: &Args,
    teacher: &SentenceEncoder,
    corpus: &Corpus,
) -> Result<(Targets, HeldEmbeddings), Box<dyn std::error::Error>> {
    let pb = bar(
        corpus.train.len() + corpus.held_count(),
        "teacher embeddings [{bar:30}] {pos}/{len} eta {eta}",
    )?;
    let targets = teacher_targets(
        teacher,
        &corpus.train,
        a.token_weight != 0.0,
        EMBED_BATCH,
        |n| pb.set_position(n as u64),
    )?;
    let mut held_t = Vec::new();
    for t in &corpus.texts {
        let done = pb.position();
        held_t.push(teacher.embed_all(&t.held, EMBED_BATCH, |n| pb.set_position(done + n as u64))?);
    }
    pb.finish_and_clear();
    Ok((targets, held_t))
}

/// Trains `s` by the run's schedule, printing the held-out cosine after every epoch;
/// returns the last epoch's held-out cosines.
fn distill(
    a: &Args,
    s: &SentenceEncoder,
    corpus: &Corpus,
    targets: &Targets,
    held_t: &[Vec<Vec<f32>>],
) -> Result<Option<HeldCosines>, Box<dyn std::error::Error>> {
    let cfg = EncoderDistillConfig {
        batch: a.batch.unwrap_or(32),
        lr: a.lr.unwrap_or(5e-4),
        lr_decay: a.lr_decay,
        token_weight: a.token_weight,
        budget: parse_bytes(&a.memory_budget)?,
        seed: a.seed,
    };
    let mut d = Distiller::new(s, &corpus.train, targets, &cfg)?;
    let plan = *d.plan();
    println!(
        "plan: batch {} = {} x {} micro-batch, {} of {} budget",
        plan.batch,
        plan.accumulation,
        plan.micro_batch,
        mib(plan.planned_bytes),
        mib(plan.budget)
    );
    let pb = bar(
        d.steps_per_epoch(),
        "{msg} [{bar:30}] {pos}/{len} eta {eta}",
    )?;
    let mut last_held = None;
    let schedule = Schedule {
        epochs: a.epochs.unwrap_or(6),
        polish_epochs: a.polish_epochs,
        polish_lr: a.polish_lr,
    };
    d.run(
        &schedule,
        |phase, n, r| {
            pb.set_position(r.step as u64);
            pb.set_message(format!("{phase} {}/{n} loss {:.4}", r.epoch, r.loss));
        },
        |phase, epoch, loss| {
            let (per_text, held) = held_out(s, &corpus.texts, held_t)?;
            pb.suspend(|| {
                println!("{phase} {epoch:>2}  loss {loss:.4}  held-out mean cosine {held:.4}")
            });
            last_held = Some((per_text, held));
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    Ok(last_held)
}

/// Writes the student with its provenance in the manifest.
fn write_student(a: &Args, s: &SentenceEncoder, teacher_file: &ModelFile, note: &str) -> CliResult {
    let stem = a.out.file_stem().map(|s| s.to_string_lossy().into_owned());
    let id = clip(stem.as_deref().unwrap_or("student"), MAX_ID_LEN);
    let mut b = s.to_builder(teacher_file, id)?;
    b.created_by(clip(note, MAX_CREATED_BY_LEN))?;
    b.write_atomic(&a.out)?;
    Ok(())
}

/// Distil a shallower encoder from `teacher_file`, report, write the student.
pub fn run(a: &Args, teacher_file: &ModelFile) -> CliResult {
    if a.text.is_empty() {
        return Err(
            "an encoder teacher needs unlabelled text: --text FILE (repeat for more)".into(),
        );
    }
    if !(0.0..1.0).contains(&a.held_out) || a.max_len < 3 {
        return Err("--held-out must be in [0, 1) and --max-len at least 3".into());
    }
    let start = Instant::now();
    let backend = Backend::auto(a.adapter.as_deref())?;
    println!("backend: {}", backend.describe());
    let teacher = SentenceEncoder::load(teacher_file, &backend)?;
    let from_file = a.from.as_ref().map(ModelFile::open).transpose()?;
    let source = from_file.as_ref().unwrap_or(teacher_file);
    let tcfg = teacher.bert().config().clone();
    let corpus = Corpus::read(a, teacher_file, &teacher)?;
    println!(
        "teacher: {} ({} layers, width {}); {} training and {} held-out sentences from {} text(s)",
        teacher_file.info().model_id.as_str(),
        tcfg.layers,
        tcfg.hidden,
        corpus.train.len(),
        corpus.held_count(),
        corpus.sources
    );
    let t0 = Instant::now();
    let (targets, held_t) = teacher_embeddings(a, &teacher, &corpus)?;
    let teacher_secs = t0.elapsed().as_secs_f64();
    drop(teacher);

    let layers = choose_layers(a, source, &backend, &corpus.train, &targets)?;
    let s = student(source, &backend, &layers, a.train_words)?;
    let sample = evenly_spaced(&corpus.train, &targets, REPORT_SENTENCES);
    let before = measure(&s, &sample, &corpus.texts, &held_t, None)?;
    let source_id = source.info().model_id.as_str();
    println!(
        "student: layers {layers:?} of {source_id}, {} parameters ({} trained); held-out mean cosine {:.4} before training",
        s.params().count(false),
        s.params().count(true),
        before.held_out
    );
    let t0 = Instant::now();
    let last_held = distill(a, &s, &corpus, &targets, &held_t)?;
    let train_secs = t0.elapsed().as_secs_f64();
    let after = measure(&s, &sample, &corpus.texts, &held_t, last_held)?;
    let (epochs, polish) = (a.epochs.unwrap_or(6), a.polish_epochs);
    let note =
        format!("pupil distill: layers {layers:?} of {source_id}, {epochs} + {polish} epochs");
    write_student(a, &s, teacher_file, &note)?;

    println!(
        "\nmean cosine to the teacher's embeddings: student from layers {layers:?} of {source_id}, then distilled ({epochs} epochs, {polish} of polish)"
    );
    report(
        a,
        &corpus.texts,
        [sample.0.len(), corpus.train.len()],
        &before,
        &after,
    );
    println!(
        "\nteacher embeddings {teacher_secs:.1} s, training {train_secs:.1} s, total {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!(
        "wrote {} ({} layers); try `pupil embed --model {} \"some text\"`",
        a.out.display(),
        layers.len(),
        a.out.display()
    );
    Ok(())
}
