//! ferrocd's tool, as etcdutl is etcd's: inspects a snapshot taken with
//! `etcdctl snapshot save` (or Maintenance.Snapshot) and restores it into a
//! new data directory; checks a stopped member's data directory. One online
//! command: `hand-over`, a member's preStop hook.

mod hand_over;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ferrocd::mvcc::{SnapshotImage, Store};
use ferrocd::snap::Snapshotter;

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
    /// Reads every record of a stopped member's WAL, snapshot files and
    /// backend (the backend on a copy: opening sled writes), changing
    /// nothing, and says what is damaged. Exits 1 if anything is.
    Check {
        #[arg(long, default_value = "default.etcd")]
        data_dir: PathBuf,
    },
    /// If the member at --endpoint leads, hands leadership to the most
    /// caught-up voter that answers and waits until it leads (a Pod's
    /// preStop hook: the member is about to stop).
    HandOver {
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoint: String,
        /// Bound of each call, the hand-over included.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// For https:// members: the CA that signed their certificates
        /// (etcdctl's flag names).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// A client certificate, for members that require one (with --key).
        #[arg(long, requires = "key", requires = "cacert")]
        cert: Option<PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
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

/// One part of the data dir checked: its line, and whether it is sound.
fn report(part: &str, result: anyhow::Result<String>) -> bool {
    match result {
        Ok(line) => {
            println!("{part}: ok: {line}");
            true
        }
        Err(e) => {
            println!("{part}: DAMAGED: {e:#}");
            false
        }
    }
}

fn check(data_dir: &Path) -> anyhow::Result<bool> {
    let member = data_dir.join("member");
    anyhow::ensure!(member.is_dir(), "{} holds no member data", data_dir.display());
    let wal = ferrocd::wal::check(&member.join("wal"));
    let wal_end = wal.as_ref().map(|w| w.last_index).ok();
    let mut sound = report(
        "wal",
        wal.map_err(anyhow::Error::from).map(|w| {
            let torn = w.torn.map_or(String::new(), |(path, offset, bytes, why)| {
                format!(
                    "; a torn tail at {} offset {offset} ({bytes} bytes: {why}) is cut at the next start",
                    path.display()
                )
            });
            let hs = w.hard_state;
            format!(
                "{} segments, {} entries up to index {}, term {} commit {}{torn}",
                w.segments, w.entries, w.last_index, hs.term, hs.commit
            )
        }),
    );
    let mut newest_snapshot = 0;
    for (path, meta) in Snapshotter::new(&member.join("snap"))?.check()? {
        if let Ok(m) = &meta {
            newest_snapshot = newest_snapshot.max(m.index);
        }
        let line = meta.map(|m| format!("index {} term {}", m.index, m.term));
        sound &= report(&format!("snapshot {}", path.display()), line.map_err(anyhow::Error::from));
    }
    let scratch = tempfile::tempdir().context("creating a scratch dir for the backend copy")?;
    let backend = (|| -> anyhow::Result<String> {
        let (original, copy) = (member.join("db"), scratch.path().join("db"));
        copy_dir(&original, &copy)?;
        // Errors name the files of the data dir, not of the copy.
        let named = |e: ferrocd::mvcc::MvccError| {
            anyhow::anyhow!(e.to_string().replace(&*copy.to_string_lossy(), &original.to_string_lossy()))
        };
        let store = Store::open(&copy).map_err(named)?;
        let records = store.verify().map_err(named)?;
        let applied = store.consistent_index();
        anyhow::ensure!(
            applied >= newest_snapshot,
            "it has applied up to index {applied}, below the newest snapshot's {newest_snapshot}"
        );
        if let Some(end) = wal_end {
            anyhow::ensure!(end >= applied, "it has applied up to index {applied}, past the wal's end at {end}");
        }
        Ok(format!("{records} records, revision {}, applied index {applied}", store.current_rev()))
    })();
    sound &= report(&format!("backend {}", member.join("db").display()), backend);
    Ok(sound)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { data_dir } => {
            if !check(&data_dir)? {
                anyhow::bail!("{} is damaged (see above)", data_dir.display());
            }
        }
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
        Command::HandOver { endpoint, timeout, cacert, cert, key } => {
            let tls = match &cacert {
                Some(ca) => {
                    let identity = cert.as_deref().zip(key.as_deref());
                    let config = ferrocd::tls::dial_config(ca, identity)?;
                    Some(Arc::new(Arc::new(config)) as Arc<dyn ferrocd::tls::ClientTls>)
                }
                None => None,
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            println!("{}", runtime.block_on(hand_over::hand_over(&endpoint, timeout, tls))?);
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
