//! ferrocd's offline tool, as etcdutl is etcd's: inspects a snapshot taken
//! with `etcdctl snapshot save` (or Maintenance.Snapshot) and restores it
//! into a new data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ferrocd::mvcc::SnapshotImage;

#[derive(Parser)]
#[command(name = "ferrocdutl", version, about = "ferrocd's offline tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot files.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Checks a snapshot and prints its hash, revision, records and size.
    Status {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: Format,
    },
    /// Restores a snapshot into a new data directory; start ferrocd on it
    /// with the new member's flags.
    Restore {
        file: PathBuf,
        #[arg(long, default_value = "default.etcd")]
        data_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Simple,
    Json,
    Table,
}

fn read(file: &PathBuf) -> anyhow::Result<(SnapshotImage, u64)> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let image = SnapshotImage::parse(&data).with_context(|| format!("checking {}", file.display()))?;
    Ok((image, data.len() as u64))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Snapshot(SnapshotCommand::Status { file, write_out }) => {
            let (image, size) = read(&file)?;
            let (hash, revision, records) = (image.hash(), image.revision().unwrap_or(0), image.records.len());
            match write_out {
                Format::Simple => println!("{hash:x}, {revision}, {records}, {size} B"),
                Format::Json => {
                    println!("{{\"hash\":{hash},\"revision\":{revision},\"totalKey\":{records},\"totalSize\":{size}}}")
                }
                Format::Table => {
                    println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
                    println!("| {hash:8x} | {revision:8} | {records:10} | {:>8} B |", size);
                }
            }
        }
        Command::Snapshot(SnapshotCommand::Restore { file, data_dir }) => {
            if data_dir.exists() {
                anyhow::bail!("data-dir {:?} exists", data_dir);
            }
            let (image, _) = read(&file)?;
            let info = image.restore(&data_dir.join("member").join("db")).context("restoring")?;
            println!("restored snapshot at revision {} into {}", info.revision, data_dir.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
