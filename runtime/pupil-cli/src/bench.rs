//! `pupil bench`: kernel and training-step benchmarks. Each timing synchronises with the GPU
//! before and after the measured work and reports the adapter it ran on.

use std::time::Instant;

use pupil::graph::Graph;
use pupil::nn::Mlp;
use pupil::ops::matmul::matmul;
use pupil::optim::{AdamWConfig, Optimizer, Rule};
use pupil::params::ParamsBuilder;
use pupil::{Backend, Tensor};
use serde_json::json;

use crate::CliResult;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum Bench {
    /// Square matmul throughput (GFLOP/s) per size.
    Matmul(MatmulArgs),
    /// One AdamW training step of an MLP 784-1024-1024-10 (ms per step).
    TrainMlp(TrainArgs),
    /// MiniLM-shaped sentence encoder forward (sentences/s), random weights.
    Embed(crate::bench_models::EmbedArgs),
    /// One AdamW training step of a MiniLM-shaped encoder (ms per step), random weights.
    TrainEncoder(crate::bench_train_encoder::TrainEncoderArgs),
    /// SmolLM2-shaped decoder prefill and decode (tokens/s, peak GPU memory), random weights.
    Generate(crate::bench_models::GenerateArgs),
}

/// Arguments of `pupil bench matmul`.
#[derive(clap::Args)]
pub struct MatmulArgs {
    /// Comma-separated sizes n (n x n times n x n).
    #[arg(long, default_value = "256,1024", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Storage type of the operands: f32 or f16 (f16 needs SHADER_F16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Seconds to spend timing each size.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pupil bench train-mlp`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Batch size.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(b: Bench) -> CliResult {
    match b {
        Bench::Matmul(a) => bench_matmul(a),
        Bench::TrainMlp(a) => bench_train(a),
        Bench::Embed(a) => crate::bench_models::embed(a),
        Bench::TrainEncoder(a) => crate::bench_train_encoder::run(a),
        Bench::Generate(a) => crate::bench_models::generate(a),
    }
}

fn random(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

/// Run `work` `reps` times and return seconds per repetition, synchronising around it.
fn time(
    backend: &Backend,
    reps: usize,
    mut work: impl FnMut() -> pupil::Result<()>,
) -> pupil::Result<f64> {
    backend.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        work()?;
    }
    backend.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

fn bench_matmul(a: MatmulArgs) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let f16 = match a.dtype.as_str() {
        "f32" => false,
        "f16" => true,
        other => return Err(format!("unknown dtype {other:?}: use f32 or f16").into()),
    };
    let mut rows = Vec::new();
    for &n in &a.sizes {
        let (x, y) = (random(n * n, 1), random(n * n, 2));
        let make = |v: &[f32]| {
            if f16 {
                Tensor::from_slice_f16(&backend, &[n, n], v)
            } else {
                Tensor::from_slice(&backend, &[n, n], v)
            }
        };
        let (ta, tb) = (make(&x)?, make(&y)?);
        let once = time(&backend, 1, || matmul(&ta, &tb).map(drop))?;
        let reps = ((a.seconds / once.max(1e-6)) as usize).clamp(3, 10_000);
        let secs = time(&backend, reps, || matmul(&ta, &tb).map(drop))?;
        let gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;
        rows.push(
            json!({ "n": n, "dtype": a.dtype, "ms": secs * 1e3, "gflops": gflops, "reps": reps }),
        );
    }
    let adapter = backend.describe();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "adapter": adapter, "results": rows }))?
        );
    } else {
        println!("matmul on {adapter}");
        println!("{:>6} {:>5} {:>10} {:>10}", "n", "dtype", "ms", "GFLOP/s");
        for r in rows {
            println!(
                "{:>6} {:>5} {:>10.3} {:>10.1}",
                r["n"],
                a.dtype,
                r["ms"].as_f64().unwrap_or(0.0),
                r["gflops"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn bench_train(a: TrainArgs) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let mut builder = ParamsBuilder::new(1);
    let net = Mlp::new(&mut builder, "mlp", &[784, a.hidden, a.hidden, 10]);
    let params = builder.build(&backend)?;
    let mut opt = Optimizer::new(&params, Rule::AdamW(AdamWConfig::default()))?;
    let x = Tensor::from_slice(&backend, &[a.batch, 784], &random(a.batch * 784, 3))?;
    let labels: Vec<f32> = (0..a.batch).map(|i| (i % 10) as f32).collect();
    let y = Tensor::from_slice(&backend, &[a.batch], &labels)?;
    let mut step = || -> pupil::Result<()> {
        let mut g = Graph::new(&backend);
        let xv = g.input(x.clone());
        let yv = g.input(y.clone());
        let logits = net.forward(&mut g, &params, xv)?;
        let loss = g.cross_entropy(logits, yv)?;
        params.zero_grad()?;
        g.backward(loss)?;
        opt.step(&params)
    };
    time(&backend, 3, &mut step)?;
    let secs = time(&backend, a.steps, &mut step)?;
    let adapter = backend.describe();
    let flops = 6.0 * a.batch as f64 * params.count(false) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "adapter": adapter, "batch": a.batch, "hidden": a.hidden, "ms_per_step": secs * 1e3, "steps": a.steps, "approx_gflops": flops / secs / 1e9 })
            )?
        );
    } else {
        println!(
            "train-mlp 784-{h}-{h}-10, batch {b}, AdamW, on {adapter}",
            h = a.hidden,
            b = a.batch
        );
        println!(
            "{:.3} ms per step ({:.1} GFLOP/s of matmul work), {} steps",
            secs * 1e3,
            flops / secs / 1e9,
            a.steps
        );
    }
    Ok(())
}
