//! The `hubbub` binary: server roles, the CLI client, and the benchmarks.
//!
//! Subcommands are added role by role; each lives in its own module and this file only
//! parses the command line and dispatches.

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// hubbub: a self-hostable real-time backend for chat and social apps.
#[derive(Debug, Parser)]
#[command(name = "hubbub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the JSON Schema of the client protocol into a directory.
    Schema {
        /// Where to write the schema files.
        #[arg(long, default_value = "docs/schema")]
        out: PathBuf,
    },
    /// Run a benchmark and print its figures.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Schema { out } => {
            hubbub_protocol::schema::write_all(&out)
                .with_context(|| format!("writing the schema to {}", out.display()))?;
            println!(
                "wrote {} schema files to {}",
                hubbub_protocol::schema::documents().len(),
                out.display()
            );
            Ok(())
        }
        Command::Bench { which } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(bench::run(which))
        }
    }
}
