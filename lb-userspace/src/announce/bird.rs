//! BIRD's control socket: the plain-text protocol `birdc` speaks, enough to list and to
//! enable or disable protocols.
//!
//! On connect BIRD greets (`0001 BIRD 2.0.12 ready.`). A command is one line; its reply
//! is lines `NNNN-text` (more follow), ` text` (continuation, same code) and a last
//! `NNNN text`. Codes 8xxx and 9xxx are errors (an unknown protocol name is `9001 syntax
//! error`). One connection per exchange keeps a restarted BIRD from breaking anything.
//!
//! Owns: the wire format and its errors. Must not touch: which protocol should be up
//! (the policy's), the names of protocols (model::announce).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// Why an exchange with BIRD failed.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot reach BIRD at {socket}: {source} (is bird running with `-s {socket}`?)")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to BIRD at {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BIRD at {socket} did not answer `{command}` within {timeout:?}")]
    Timeout {
        socket: String,
        command: String,
        timeout: Duration,
    },
    #[error("BIRD refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
}

/// One line of a reply: its code and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub text: String,
}

/// A client of one BIRD control socket.
#[derive(Clone, Debug)]
pub struct Bird {
    socket: PathBuf,
    timeout: Duration,
}

impl Bird {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs one command; its reply lines, or why it failed.
    pub async fn command(&self, command: &str) -> Result<Vec<Line>, BirdError> {
        let socket = self.socket.display().to_string();
        match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(r) => r,
            Err(_) => Err(BirdError::Timeout {
                socket,
                command: command.into(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self, command: &str) -> Result<Vec<Line>, BirdError> {
        let socket = || self.socket.display().to_string();
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| BirdError::Connect {
                    socket: socket(),
                    source,
                })?;
        let io = |source| BirdError::Io {
            socket: socket(),
            source,
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        read_reply(&mut lines).await.map_err(io)?; // the greeting
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let reply = read_reply(&mut lines).await.map_err(io)?;
        match reply.last() {
            Some(l) if l.code >= 8000 => Err(BirdError::Refused {
                command: command.into(),
                reply: l.text.clone(),
            }),
            _ => Ok(reply),
        }
    }

    /// The state of every protocol whose name starts with `prefix`: name → up (`true`)
    /// or not (disabled, or down for another reason).
    pub async fn protocols(&self, prefix: &str) -> Result<BTreeMap<String, bool>, BirdError> {
        let reply = self
            .command(&format!("show protocols \"{prefix}*\""))
            .await?;
        Ok(protocol_states(&reply))
    }

    /// `enable NAME` or `disable NAME` (done, or already so).
    pub async fn set(&self, name: &str, up: bool) -> Result<(), BirdError> {
        let verb = if up { "enable" } else { "disable" };
        self.command(&format!("{verb} {name}")).await.map(drop)
    }
}

/// Reads one reply: every line up to the one whose code is followed by a space.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> std::io::Result<Vec<Line>> {
    let mut out = Vec::new();
    let mut code = 0;
    loop {
        let Some(raw) = lines.next_line().await? else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "BIRD closed the connection in the middle of a reply",
            ));
        };
        let (line, last) = parse_line(&raw, code);
        code = line.code;
        out.push(line);
        if last {
            return Ok(out);
        }
    }
}

/// One raw line: `NNNN-text`, `NNNN text` (the last) or ` text` (continuation of the
/// previous line's code).
fn parse_line(raw: &str, previous_code: u16) -> (Line, bool) {
    let b = raw.as_bytes();
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
        let code = raw[..4].parse().unwrap_or(0);
        let line = Line {
            code,
            text: raw[5..].to_string(),
        };
        return (line, b[4] == b' ');
    }
    let text = raw.strip_prefix(' ').unwrap_or(raw).to_string();
    (
        Line {
            code: previous_code,
            text,
        },
        false,
    )
}

/// Name → up, from the rows (code 1002) of `show protocols`.
fn protocol_states(reply: &[Line]) -> BTreeMap<String, bool> {
    reply
        .iter()
        .filter(|l| l.code == 1002)
        .filter_map(|l| {
            let f: Vec<&str> = l.text.split_whitespace().collect();
            Some((f.first()?.to_string(), *f.get(3)? == "up"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Vec<Line> {
        let mut code = 0;
        text.lines()
            .map(|l| {
                let (line, _) = parse_line(l, code);
                code = line.code;
                line
            })
            .collect()
    }

    /// What BIRD 2.0.12 answered here.
    #[test]
    fn show_protocols_reply() {
        let reply = parse_all(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-xlb_10_200_0_1 Static     master4    down   14:06:45.632  \n \
             xlb_fd00_200__1 Static     master6    up     14:06:45.632  \n\
             0000 ",
        );
        let states = protocol_states(&reply);
        assert_eq!(states.get("xlb_10_200_0_1"), Some(&false));
        assert_eq!(states.get("xlb_fd00_200__1"), Some(&true));
        assert_eq!(states.len(), 2);
    }

    #[test]
    fn last_lines_and_errors() {
        assert_eq!(
            parse_line("0011-xlb_1: enabled", 0),
            (
                Line {
                    code: 11,
                    text: "xlb_1: enabled".into()
                },
                false
            )
        );
        assert!(parse_line("0000 ", 11).1);
        let (l, last) = parse_line(
            "9001 syntax error, unexpected CF_SYM_UNDEFINED, expecting CF_SYM_KNOWN or TEXT or ALL",
            0,
        );
        assert!(last && l.code == 9001);
    }
}
