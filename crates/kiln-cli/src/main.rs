//! `kiln`: the command line. Thin: parse, call the library, print (text for people, `--json` for scripts).

mod alloc_count;
mod backend;
mod bench;
mod commands;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run and adapt pretrained language models (GPT-2, OPT, BERT, BART, T5) on burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a decoder-only model (greedy, sampling, beam search).
    Generate(commands::GenerateArgs),
    /// Per-token log-probabilities and perplexity of a text, or of a target given a source (encoder-decoders).
    Score(commands::ScoreArgs),
    /// ROUGE-1/2/L/Lsum of predictions against references, as rouge-score computes them.
    Rouge(commands::RougeArgs),
    /// Load a checkpoint and report what was loaded.
    Inspect(commands::InspectArgs),
    /// Zero-shot question answering with an encoder-decoder model (T0/T5), beam search.
    ZeroShot(commands::ZeroShotArgs),
    /// Summarize articles with an encoder-decoder model (BART, T5).
    Summarize(commands::SummarizeArgs),
    /// Sentence embeddings (mean pooling, L2-normalised) from a BERT checkpoint.
    Embed(commands::EmbedArgs),
    /// Classify texts with a BERT sequence-classification checkpoint.
    Classify(commands::ClassifyArgs),
    /// In-context learning: k-shot prompts, answers by generation or by label likelihood.
    Icl(commands::IclArgs),
    /// Run one of the seed notebook's experiments (a recipe): training, evaluation, reports.
    Train(commands::TrainArgs),
    /// The meeting point of a multi-node data-parallel run (`kiln train … --nodes N --orchestrator HOST:PORT`).
    Orchestrator(commands::OrchestratorArgs),
    /// PEFT adapters: inspect one, or merge one into its base model.
    Peft(commands::PeftArgs),
    /// Benchmarks on real-size models with random init (used by `cargo xtask bench`).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`kiln … | head`) instead of panicking in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Score(a) => commands::score(a),
        Command::Rouge(a) => commands::rouge(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::ZeroShot(a) => commands::zero_shot(a),
        Command::Summarize(a) => commands::summarize(a),
        Command::Embed(a) => commands::embed(a),
        Command::Classify(a) => commands::classify(a),
        Command::Icl(a) => commands::icl(a),
        Command::Train(a) => commands::train(a),
        Command::Orchestrator(a) => commands::orchestrator(a),
        Command::Bench(a) => bench::bench(a),
        Command::Peft(a) => commands::peft(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
