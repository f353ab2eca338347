//! Colour on a terminal (unless `NO_COLOR`), plain text everywhere else

use std::io::IsTerminal;

/// Whether to colour what goes to stdout / stderr
#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    on: bool,
}

impl Style {
    /// Colours when `stream_is_terminal` and `NO_COLOR` is not set
    pub(crate) fn new(stream_is_terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            on: stream_is_terminal && !no_color,
        }
    }

    /// For stdout
    pub(crate) fn stdout() -> Self {
        Self::new(std::io::stdout().is_terminal())
    }

    /// For stderr
    pub(crate) fn stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// Whether colours (and cursor movement) are on
    pub(crate) fn is_on(self) -> bool {
        self.on
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub(crate) fn red(self, text: &str) -> String {
        self.paint("1;31", text)
    }

    pub(crate) fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    pub(crate) fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }

    pub(crate) fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub(crate) fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}
