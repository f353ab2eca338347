//! The executor's local I/O, blocking: token files with `std::fs`, CLIs as child processes
//! killed as a group at their deadline

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::executor::MAX_COMMAND_OUTPUT;
use redis_entraid_core::secret::SecretBytes;

/// Reads a token or assertion file of at most `max_len` bytes, blocking (the executor's file
/// backend; the tokio runtime runs it on its blocking pool)
///
/// # Errors
/// A permanent [`TransportError`] naming the file when it cannot be read or is larger than
/// `max_len`.
pub fn read_file(path: &std::path::Path, max_len: u64) -> Result<SecretBytes, TransportError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        TransportError::permanent(format!("cannot read {}: {e}", path.display())).with_source(e)
    })?;
    if meta.len() > max_len {
        return Err(TransportError::permanent(format!(
            "{} is {} bytes, more than the {max_len} allowed",
            path.display(),
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max_len).read_to_end(&mut bytes))
        .map_err(|e| {
            TransportError::permanent(format!("cannot read {}: {e}", path.display())).with_source(e)
        })?;
    Ok(SecretBytes::new(bytes))
}

fn command_dir() -> std::path::PathBuf {
    if cfg!(windows) {
        std::env::var_os("SYSTEMROOT")
            .filter(|d| !d.is_empty())
            .map_or_else(|| std::path::PathBuf::from(r"C:\Windows"), Into::into)
    } else {
        std::path::PathBuf::from("/bin")
    }
}

fn kill_tree(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(child),
            rustix::process::Signal::KILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a CLI (`az`, `azd`, ...) as the executor's command backend, blocking: in a folder of
/// the system (never the application's), with piped output read up to
/// [`MAX_COMMAND_OUTPUT`] bytes a stream, its whole process group killed at the deadline
/// (`spec.timeout` or `timeout`, the shorter)
///
/// Never fails: a program that is not installed is [`CommandOutput::not_found`], one that
/// could not start or did not finish in time has no exit code and says why on stderr.
pub fn run_command(spec: &CommandSpec, timeout: Duration) -> CommandOutput {
    run(spec, timeout)
        .unwrap_or_else(|e| CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()))
}

fn run(spec: &CommandSpec, timeout: Duration) -> Result<CommandOutput, TransportError> {
    let program = if cfg!(windows) {
        &spec.windows_program
    } else {
        &spec.program
    };
    let mut command = Command::new(program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(command_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CommandOutput::not_found()),
        Err(e) => {
            return Err(TransportError::new(format!("cannot start {program}: {e}")).with_source(e))
        }
    };
    // Drain both pipes on their own threads so a chatty process cannot block on a full pipe;
    // they report through channels so this thread can stop waiting at the deadline.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_COMMAND_OUTPUT).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let limit = timeout.min(spec.timeout);
    let deadline = Instant::now() + limit;
    let timed_out = || {
        TransportError::new(format!(
            "{program} did not finish within {}ms",
            limit.as_millis()
        ))
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_tree(&mut child);
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_tree(&mut child);
                return Err(
                    TransportError::new(format!("waiting for {program} failed")).with_source(e)
                );
            }
        }
    };
    // The program exited, but a process it left behind may still hold its output open: wait
    // for the output only until the deadline, then kill what is left of the group (the
    // reader threads then see end-of-file and end).
    let left = || deadline.saturating_duration_since(Instant::now());
    match (out.recv_timeout(left()), err.recv_timeout(left())) {
        (Ok(stdout), Ok(stderr)) => Ok(CommandOutput::new(status.code(), stdout, stderr)),
        _ => {
            kill_tree(&mut child);
            Err(TransportError::new(format!(
                "{program} exited, but a process it started kept its output open past the {}ms \
                 deadline",
                limit.as_millis()
            )))
        }
    }
}
