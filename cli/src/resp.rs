//! Just enough RESP to diagnose a connection: send a command, read one reply (RESP2 or RESP3)
//!
//! `check` talks to Redis itself rather than through redis-rs so it can report each step
//! (TLS, HELLO/AUTH, PING) separately, with the server's exact error reply.

use std::io::{self, BufRead, BufReader, Read, Write};

/// A byte stream to Redis, plain or TLS
pub(crate) trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One reply
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// `+OK`, `+PONG`, a bulk string, a number: as text
    Text(String),
    /// `-ERR ...`, `-WRONGPASS ...`
    Error(String),
    /// Nil
    Nil,
    /// An array, set, map (flattened) or push
    List(Vec<Reply>),
}

/// A connection that sends commands and reads replies
pub(crate) struct Connection {
    stream: BufReader<Box<dyn Stream>>,
}

/// Replies larger than this are refused (a diagnosis needs none)
const MAX_LEN: usize = 16 * 1024 * 1024;

impl Connection {
    pub(crate) fn new(stream: Box<dyn Stream>) -> Self {
        Self {
            stream: BufReader::new(stream),
        }
    }

    /// Sends `args` as one command and reads its reply
    ///
    /// # Errors
    /// An I/O error when the connection fails or the reply is not RESP.
    pub(crate) fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let written = self
            .stream
            .get_mut()
            .write_all(&out)
            .and_then(|()| self.stream.get_mut().flush());
        // The buffer may hold a token: wipe it whatever happened.
        out.iter_mut().for_each(|b| *b = 0);
        written?;
        self.read()
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = (&mut self.stream)
            .take(MAX_LEN as u64)
            .read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "the reply is not RESP");
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        let count = |rest: &str| -> io::Result<Option<usize>> {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(None);
            }
            let n = usize::try_from(n).map_err(|_| bad())?;
            if n > MAX_LEN {
                return Err(bad());
            }
            Ok(Some(n))
        };
        match kind {
            "+" | ":" | "," | "(" | "#" => Ok(Reply::Text(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            "_" => Ok(Reply::Nil),
            "$" | "=" | "!" => {
                let Some(n) = count(rest)? else {
                    return Ok(Reply::Nil);
                };
                let mut buf = vec![0; n + 2];
                self.stream.read_exact(&mut buf)?;
                buf.truncate(n);
                let text = String::from_utf8_lossy(&buf).into_owned();
                Ok(if kind == "!" {
                    Reply::Error(text)
                } else {
                    Reply::Text(text)
                })
            }
            "*" | "~" | ">" | "%" | "|" => {
                let Some(n) = count(rest)? else {
                    return Ok(Reply::Nil);
                };
                let items = if matches!(kind, "%" | "|") { n * 2 } else { n };
                let list = (0..items).map(|_| self.read()).collect::<io::Result<_>>()?;
                if kind == "|" {
                    // An attribute precedes the real reply.
                    return self.read();
                }
                Ok(Reply::List(list))
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that replays `input` and swallows what is written
    struct Replay(Cursor<Vec<u8>>);

    impl Read for Replay {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Replay {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn replies(input: &str, n: usize) -> Vec<io::Result<Reply>> {
        let mut conn = Connection::new(Box::new(Replay(Cursor::new(input.as_bytes().to_vec()))));
        (0..n).map(|_| conn.call(&["PING"])).collect()
    }

    #[test]
    fn resp2_and_resp3_replies_are_read_including_a_hello_map() {
        let hello = "%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n";
        let input = format!("+PONG\r\n-WRONGPASS invalid\r\n$-1\r\n_\r\n{hello}$3\r\nabc\r\n");
        let got: Vec<_> = replies(&input, 6).into_iter().map(Result::unwrap).collect();
        assert_eq!(got[0], Reply::Text("PONG".into()));
        assert_eq!(got[1], Reply::Error("WRONGPASS invalid".into()));
        assert_eq!(got[2], Reply::Nil);
        assert_eq!(got[3], Reply::Nil);
        assert!(matches!(&got[4], Reply::List(items) if items.len() == 4));
        assert_eq!(got[5], Reply::Text("abc".into()));
    }

    #[test]
    fn a_closed_connection_and_garbage_are_errors_not_panics() {
        assert!(replies("", 1)[0].is_err());
        assert!(replies("?what\r\n", 1)[0].is_err());
        assert!(replies("$99999999999\r\n", 1)[0].is_err());
        assert!(replies("*x\r\n", 1)[0].is_err());
    }
}
