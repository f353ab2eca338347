//! One error type for every command: a message, its cause chain, one piece of advice, and
//! whether the user asked for something impossible (exit 2) or the thing checked failed (exit 1)

use std::error::Error as StdError;
use std::fmt;

/// Exit status when what was checked or asked for failed
pub(crate) const EXIT_FAILED: i32 = 1;
/// Exit status for a usage error: bad argument, bad URL, missing variable
pub(crate) const EXIT_USAGE: i32 = 2;

/// A command's failure, printed as one line (plus a hint line when there is advice)
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    causes: Vec<String>,
    advice: Option<String>,
    usage: bool,
}

impl CliError {
    /// What was checked failed
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            causes: Vec::new(),
            advice: None,
            usage: false,
        }
    }

    /// The user asked for something that cannot work as given
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            usage: true,
            ..Self::failed(message)
        }
    }

    /// Appends `cause` and its whole source chain
    pub(crate) fn cause(mut self, cause: impl StdError) -> Self {
        self.causes.push(one_line(&cause.to_string()));
        let mut source = cause.source();
        while let Some(s) = source {
            let text = one_line(&s.to_string());
            // Many errors repeat their source in their own message; say each thing once.
            if !self.causes.iter().any(|c| c.contains(&text)) {
                self.causes.push(text);
            }
            source = s.source();
        }
        self
    }

    /// One sentence saying what to do about it
    pub(crate) fn advice(mut self, advice: impl Into<String>) -> Self {
        self.advice = Some(advice.into());
        self
    }

    /// The process exit status for this error
    pub(crate) fn exit_code(&self) -> i32 {
        if self.usage {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        }
    }

    /// The hint, if any
    pub(crate) fn advice_text(&self) -> Option<&str> {
        self.advice.as_deref()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// `text` on one line: the default chain lists its steps on lines of their own
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace(":;", ":")
}

/// Flattens an error and its sources into one line
pub(crate) fn chain(error: &dyn StdError) -> String {
    let mut line = one_line(&error.to_string());
    let mut source = error.source();
    while let Some(s) = source {
        let text = one_line(&s.to_string());
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_chain_error_becomes_one_line() {
        let text = "no credential in the default chain produced a token; configure one of them:\n  - environment: skipped: x\n  - managed identity (IMDS): unavailable: y";
        let line = one_line(text);
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "no credential in the default chain produced a token; configure one of them: environment: skipped: x; managed identity (IMDS): unavailable: y"
        );
    }
}
