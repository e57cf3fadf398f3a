//! Where the CLI's output goes: report lines to stdout, or to stderr while a command prints
//! JSON (stdout then holds only the JSON); a closed stdout ends the program quietly; the
//! files a command will write are checked before the work, not after it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// With `on`, the command's stdout is for [`print_json`] alone: report lines (`println!`)
/// go to stderr.
pub fn json_mode(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Writes a report line for the CLI's `println!`: to stdout, or to stderr in [`json_mode`].
pub fn report(args: std::fmt::Arguments) {
    if JSON.load(Ordering::Relaxed) {
        // As `eprint!` does, but a closed stderr is no reason to stop.
        let _ = std::io::stderr().lock().write_fmt(args);
    } else {
        print_stdout(args);
    }
}

/// Prints a command's JSON `text` and a newline on stdout (also in [`json_mode`]).
pub fn print_json(text: &str) {
    print_stdout(format_args!("{text}\n"));
}

/// Writes to stdout: a closed stdout ends the program with status 0, another write error
/// with status 1 and the error on stderr.
pub fn print_stdout(args: std::fmt::Arguments) {
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        exit_on_stdout_error(&e);
    }
}

/// Ends the program after a failed write to stdout: quietly with status 0 when the reader
/// closed it (`| head`), else with the error and status 1.
pub fn exit_on_stdout_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("pupil: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Checks, before any work, that a file can be written at `path` (`what` names the option,
/// e.g. "--out"): its folder exists and accepts a new file (one is created and removed).
pub fn check_writable(what: &str, path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{what} {}: is a folder; give a file path",
            path.display()
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "{what} {}: the folder {} does not exist; create it or choose another path",
            path.display(),
            parent.display()
        ));
    }
    tempfile::Builder::new()
        .prefix(".pupil-write-check")
        .tempfile_in(parent)
        .map(drop)
        .map_err(|e| {
            format!(
                "{what} {}: cannot write in {} ({e}); choose a writable path",
                path.display(),
                parent.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_paths_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable("--out", &dir.path().join("m.pupil")).is_ok());
        let e = check_writable("--out", &dir.path().join("no/m.pupil")).unwrap_err();
        assert!(
            e.contains("does not exist") && e.contains("no/m.pupil"),
            "{e}"
        );
        let e = check_writable("--out", dir.path()).unwrap_err();
        assert!(e.contains("is a folder"), "{e}");
    }
}
