//! What the user does: lines from stdin (read on a plain thread, so a
//! blocked read never holds up the runtime's shutdown), Ctrl-C / SIGTERM,
//! and the parser of `/commands`.

use std::io::BufRead;

use tokio::sync::mpsc;

use crate::protocol::{is_valid_name, HISTORY_LEN};

/// One input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A line from stdin, without its line ending.
    Line(String),
    /// stdin reached its end (or failed).
    Eof,
    /// Ctrl-C or SIGTERM.
    Interrupt,
}

/// The merged input events.
pub(crate) struct Inputs {
    lines: mpsc::Receiver<Input>,
    signals: mpsc::UnboundedReceiver<()>,
    eof: bool,
}

impl Inputs {
    /// Starts the stdin reader thread and the signal listener (needs a
    /// runtime).
    pub(crate) fn spawn() -> Self {
        let (line_tx, lines) = mpsc::channel(64);
        let spawned = std::thread::Builder::new()
            .name("relay-chat-stdin".into())
            .spawn(move || read_stdin(line_tx));
        let eof = spawned.is_err();
        let (signal_tx, signals) = mpsc::unbounded_channel();
        tokio::spawn(listen_signals(signal_tx));
        Inputs {
            lines,
            signals,
            eof,
        }
    }

    /// The next event; with `lines` false only signals (stdin is left
    /// buffered for later). Cancel-safe. After [`Input::Eof`] only signals
    /// come.
    pub(crate) async fn next(&mut self, lines: bool) -> Input {
        tokio::select! {
            biased;
            s = self.signals.recv() => match s {
                Some(()) => Input::Interrupt,
                // No signal handling available: wait for stdin alone.
                None if lines => self.next_line().await,
                None => std::future::pending().await,
            },
            line = self.lines.recv(), if lines && !self.eof => {
                match line {
                    Some(Input::Eof) | None => {
                        self.eof = true;
                        Input::Eof
                    }
                    Some(other) => other,
                }
            }
        }
    }

    async fn next_line(&mut self) -> Input {
        if self.eof {
            return std::future::pending().await;
        }
        match self.lines.recv().await {
            Some(Input::Eof) | None => {
                self.eof = true;
                Input::Eof
            }
            Some(other) => other,
        }
    }
}

/// The stdin thread: one event per line, then `Eof`. Invalid UTF-8 is
/// replaced rather than fatal.
fn read_stdin(tx: mpsc::Sender<Input>) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.blocking_send(Input::Line(line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = tx.blocking_send(Input::Eof);
}

/// Forwards Ctrl-C and (on Unix) SIGTERM.
async fn listen_signals(tx: mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let interrupted = async {
            if tokio::signal::ctrl_c().await.is_err() {
                // No Ctrl-C handling here; SIGTERM may still work.
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminated = std::future::pending::<()>();
        tokio::select! {
            _ = interrupted => {}
            _ = terminated => {}
        }
        if tx.send(()).is_err() {
            return;
        }
    }
}

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing to do (a blank line).
    Nothing,
    /// Send text to the current room.
    Say(String),
    /// `/dm USER TEXT`.
    Dm {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// `/join ROOM`.
    Join(String),
    /// `/leave [ROOM]`.
    Leave(Option<String>),
    /// `/who`.
    Who,
    /// `/history [N]`.
    History(usize),
    /// `/quit`.
    Quit,
    /// `/help`, or an unknown command (named).
    Help(Option<String>),
    /// A known command used wrongly: the usage line to show.
    Usage(&'static str),
}

/// The short help printed for `/help` and unknown commands.
pub(crate) const COMMANDS_HELP: &str = "commands: /dm USER TEXT, /join ROOM, /leave [ROOM], \
/who, /history [N], /quit (a line starting with // sends a literal /)";

/// Parses one input line.
pub(crate) fn parse(line: &str) -> Action {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Action::Nothing;
    }
    if let Some(literal) = trimmed.strip_prefix("//") {
        return Action::Say(format!("/{literal}"));
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Action::Say(trimmed.to_owned());
    };
    let (name, rest) = match command.split_once(char::is_whitespace) {
        Some((n, r)) => (n, r.trim()),
        None => (command, ""),
    };
    match name.to_ascii_lowercase().as_str() {
        "dm" | "msg" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) if is_valid_name(to) && !text.trim().is_empty() => Action::Dm {
                to: to.to_owned(),
                text: text.trim().to_owned(),
            },
            _ => Action::Usage("usage: /dm USER TEXT"),
        },
        "join" => match rest {
            room if is_valid_name(room) => Action::Join(room.to_owned()),
            _ => Action::Usage("usage: /join ROOM (letters, digits, _ . -; up to 32)"),
        },
        "leave" | "part" => match rest {
            "" => Action::Leave(None),
            room if is_valid_name(room) => Action::Leave(Some(room.to_owned())),
            _ => Action::Usage("usage: /leave [ROOM]"),
        },
        "who" if rest.is_empty() => Action::Who,
        "who" => Action::Usage("usage: /who"),
        "history" => match rest {
            "" => Action::History(HISTORY_LEN),
            n => match n.parse::<usize>() {
                Ok(n) if (1..=HISTORY_LEN).contains(&n) => Action::History(n),
                _ => Action::Usage("usage: /history [N], N in 1..=50"),
            },
        },
        "quit" | "exit" => Action::Quit,
        "help" | "?" => Action::Help(None),
        _ => Action::Help(Some(format!("/{name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_said() {
        assert_eq!(parse("  hello there "), Action::Say("hello there".into()));
        assert_eq!(parse("   "), Action::Nothing);
        assert_eq!(parse("//shrug"), Action::Say("/shrug".into()));
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse("/dm bob hi  there"),
            Action::Dm {
                to: "bob".into(),
                text: "hi  there".into()
            }
        );
        assert!(matches!(parse("/dm bob"), Action::Usage(_)));
        assert!(matches!(parse("/dm b@d hi"), Action::Usage(_)));
        assert_eq!(parse("/join dev"), Action::Join("dev".into()));
        assert!(matches!(parse("/join"), Action::Usage(_)));
        assert!(matches!(parse("/join a b"), Action::Usage(_)));
        assert_eq!(parse("/leave"), Action::Leave(None));
        assert_eq!(parse("/leave dev"), Action::Leave(Some("dev".into())));
        assert_eq!(parse("/who"), Action::Who);
        assert_eq!(parse("/history"), Action::History(50));
        assert_eq!(parse("/history 5"), Action::History(5));
        assert!(matches!(parse("/history 0"), Action::Usage(_)));
        assert!(matches!(parse("/history 51"), Action::Usage(_)));
        assert_eq!(parse("/quit"), Action::Quit);
        assert_eq!(parse("/QUIT"), Action::Quit);
        assert_eq!(parse("/help"), Action::Help(None));
        assert_eq!(parse("/nope x"), Action::Help(Some("/nope".into())));
    }
}
