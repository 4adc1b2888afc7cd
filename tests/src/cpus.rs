//! CPU affinity for benchmark processes, through util-linux's `taskset`
//! (what a reader would use to reproduce a pinned run by hand).

use std::path::Path;
use std::process::Command;

/// Checks a CPU list in `taskset -c` form: `0`, `0,2`, `0-3,6`.
pub fn parse_list(list: &str) -> Result<Vec<usize>, String> {
    let cpu = |s: &str| s.parse::<usize>().map_err(|_| format!("bad CPU number {s:?} in CPU list {list:?}"));
    let mut cpus = Vec::new();
    for item in list.split(',') {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (cpu(lo)?, cpu(hi)?);
                if lo > hi {
                    return Err(format!("bad range {item:?} in CPU list {list:?}"));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(cpu(item)?),
        }
    }
    Ok(cpus)
}

/// A command that runs `bin` on `cpus` only, or anywhere without them.
pub fn command(bin: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(list).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Moves every thread of this process onto `cpus`; threads started later
/// inherit it.
pub fn pin_this_process(cpus: &str) -> Result<(), String> {
    taskset(&["-a", "-p", "-c", cpus, &std::process::id().to_string()])
}

/// Runs `f` on a thread of its own that may run on `cpus` only (anywhere
/// without them), and returns what it returned.
pub fn run_on<T: Send>(cpus: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            if let Some(list) = cpus {
                // /proc/thread-self names this thread's task: `<pid>/task/<tid>`.
                let task = std::fs::read_link("/proc/thread-self").map_err(|e| format!("/proc/thread-self: {e}"))?;
                let tid = task.file_name().and_then(|t| t.to_str()).ok_or("/proc/thread-self has no thread id")?;
                taskset(&["-p", "-c", list, tid])?;
            }
            Ok(f())
        });
        thread.join().map_err(|_| "the pinned thread panicked".to_string())?
    })
}

fn taskset(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new("taskset").args(args).output().map_err(|e| format!("cannot run taskset (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("taskset {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The CPUs a thread or process may run on, as the kernel reports them.
pub fn allowed_at(proc_dir: &Path) -> Option<String> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string())
}

/// The CPUs a process may run on, as the kernel reports them.
pub fn allowed(pid: u32) -> Option<String> {
    allowed_at(Path::new(&format!("/proc/{pid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_in_taskset_form() {
        assert_eq!(parse_list("1"), Ok(vec![1]));
        assert_eq!(parse_list("0,2-4"), Ok(vec![0, 2, 3, 4]));
        for bad in ["", "a", "1,", "3-1", "-1", "0-"] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_thread_runs_on_the_cpus_it_is_given() {
        let all = allowed(std::process::id()).expect("Cpus_allowed_list in /proc");
        let first = parse_list(&all).expect("a CPU list")[0].to_string();
        let on = |cpus| run_on(cpus, || allowed_at(Path::new("/proc/thread-self")));
        assert_eq!(on(Some(&first)), Ok(Some(first.clone())));
        assert_eq!(on(None), Ok(Some(all.clone())));
        assert!(on(Some("99999")).is_err(), "a CPU this machine lacks");
        // The caller's own thread is left as it was.
        assert_eq!(allowed(std::process::id()), Some(all));
    }

    #[test]
    fn this_process_reports_its_cpus() {
        let list = allowed(std::process::id()).expect("Cpus_allowed_list in /proc");
        assert!(!parse_list(&list).expect("a CPU list").is_empty(), "{list}");
    }
}
