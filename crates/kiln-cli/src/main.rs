//! `kiln`: the command line. Thin: parse, call the library, print (text for people, `--json` for scripts).

mod backend;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Run and adapt pretrained language models (GPT-2, OPT, BERT, BART, T5) on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a decoder-only model (greedy, sampling, beam search).
    Generate(commands::GenerateArgs),
    /// Per-token log-probabilities and perplexity of a text.
    Score(commands::ScoreArgs),
    /// ROUGE-1/2/L/Lsum of predictions against references, as rouge-score computes them.
    Rouge(commands::RougeArgs),
    /// Load a checkpoint and report what was loaded.
    Inspect(commands::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Score(a) => commands::score(a),
        Command::Rouge(a) => commands::rouge(a),
        Command::Inspect(a) => commands::inspect(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
