//! Container log line formats, parsed without IO: CRI (containerd, CRI-O), Docker's
//! `json-file`, and plain text. Partial lines are joined per stream by [`Assembler`].
//!
//! - CRI: `2024-01-01T00:00:00.000000000Z stdout F message`; the tag `P` marks a partial
//!   line continued by the next line of the same stream, `F` the full or final one.
//! - Docker: `{"log":"message\n","stream":"stdout","time":"..."}`; a `log` without the
//!   trailing newline is partial (the daemon splits lines at 16 KiB).
//! - App JSON (`{"level":"info","msg":"...","user":"alice"}`, alone or inside either of the
//!   above) is flattened to `msg key=value ...` (keys sorted, time keys dropped), which
//!   mines far better than raw JSON.

use serde::Deserialize;

/// How to read lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Detect per line: Docker JSON, CRI, app JSON, else plain.
    #[default]
    Auto,
    /// Every line is a message as is.
    Plain,
    /// CRI lines (others are taken as plain).
    Cri,
    /// Docker `json-file` lines (others are taken as plain).
    Docker,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "plain" => Ok(LogFormat::Plain),
            "cri" => Ok(LogFormat::Cri),
            "docker" => Ok(LogFormat::Docker),
            other => Err(format!(
                "unknown log format {other:?} (auto, plain, cri, docker)"
            )),
        }
    }
}

/// Which output stream a container line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One parsed CRI line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// RFC 3339 time as written.
    pub time: &'a str,
    /// The stream.
    pub stream: Stream,
    /// True for a `P` (partial) line.
    pub partial: bool,
    /// The message (possibly empty).
    pub message: &'a str,
}

/// Parses a CRI line, or `None` if it is not one.
pub fn parse_cri(line: &str) -> Option<CriLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let b = time.as_bytes();
    if b.len() < 20 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let tag = parts.next()?;
    let partial = match tag.split(':').next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    let message = parts.next().unwrap_or("");
    Some(CriLine {
        time,
        stream,
        partial,
        message,
    })
}

/// One parsed Docker `json-file` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerLine {
    /// The `time` field.
    pub time: String,
    /// The stream (stdout when absent or unknown).
    pub stream: Stream,
    /// True when the `log` field lacks its trailing newline.
    pub partial: bool,
    /// The message without its trailing newline.
    pub message: String,
}

#[derive(Deserialize)]
struct DockerRaw {
    log: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    time: String,
}

/// Parses a Docker `json-file` line, or `None` if it is not one.
pub fn parse_docker(line: &str) -> Option<DockerLine> {
    if !line.trim_start().starts_with('{') || !line.contains("\"log\"") {
        return None;
    }
    let raw: DockerRaw = serde_json::from_str(line).ok()?;
    let partial = !raw.log.ends_with('\n');
    let message = raw.log.strip_suffix('\n').unwrap_or(&raw.log);
    let message = message.strip_suffix('\r').unwrap_or(message).to_string();
    let stream = if raw.stream == "stderr" {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    Some(DockerLine {
        time: raw.time,
        stream,
        partial,
        message,
    })
}

const MESSAGE_KEYS: [&str; 6] = ["msg", "message", "MESSAGE", "Message", "log", "text"];
const TIME_KEYS: [&str; 7] = [
    "time",
    "ts",
    "timestamp",
    "@timestamp",
    "t",
    "date",
    "datetime",
];

/// Flattens an application JSON object to `message key=value ...`, or `None` when the
/// line is not a JSON object.
pub fn flatten_json(line: &str) -> Option<String> {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return None;
    }
    let serde_json::Value::Object(map) = serde_json::from_str::<serde_json::Value>(trimmed).ok()?
    else {
        return None;
    };
    let mut out = String::new();
    let msg_key = MESSAGE_KEYS
        .iter()
        .find(|k| map.get(**k).is_some_and(|v| v.is_string()));
    if let Some(key) = msg_key
        && let Some(serde_json::Value::String(msg)) = map.get(*key)
    {
        out.push_str(msg.trim_end());
    }
    for (key, value) in &map {
        if Some(&key.as_str()) == msg_key || TIME_KEYS.contains(&key.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push('=');
        match value {
            serde_json::Value::String(s) if !s.contains(char::is_whitespace) => out.push_str(s),
            serde_json::Value::String(s) => {
                out.push('"');
                out.push_str(&s.replace('"', "'"));
                out.push('"');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Some(out)
}

/// A whole message, after joining partial lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The text (flattened if it was app JSON).
    pub text: String,
    /// The stream, for container formats.
    pub stream: Option<Stream>,
    /// The caller's tags (e.g. line numbers) of every line joined into this message.
    pub parts: Vec<u64>,
    /// True when the text was cut at the maximum length.
    pub truncated: bool,
}

#[derive(Default)]
struct Pending {
    text: String,
    parts: Vec<u64>,
    truncated: bool,
}

/// Joins partial CRI / Docker lines per stream into whole messages, bounded by `max_len`
/// bytes per message (the rest of an over-long message is dropped and flagged) and by
/// `max_parts` lines per message (past it the message is emitted as it stands).
pub struct Assembler {
    format: LogFormat,
    max_len: usize,
    max_parts: usize,
    pending: [Pending; 2],
}

impl Assembler {
    /// A joiner for `format`.
    pub fn new(format: LogFormat, max_len: usize) -> Self {
        Assembler {
            format,
            max_len: max_len.max(1),
            max_parts: 4096,
            pending: Default::default(),
        }
    }

    /// Takes one physical line (without its newline) tagged `tag`; returns a message when
    /// one is complete.
    pub fn push(&mut self, tag: u64, line: &str) -> Option<Message> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (stream, partial, text): (Option<Stream>, bool, std::borrow::Cow<'_, str>) =
            match self.format {
                LogFormat::Plain => (None, false, line.into()),
                LogFormat::Auto | LogFormat::Cri | LogFormat::Docker => {
                    let docker = (self.format != LogFormat::Cri)
                        .then(|| parse_docker(line))
                        .flatten();
                    let cri = (docker.is_none() && self.format != LogFormat::Docker)
                        .then(|| parse_cri(line))
                        .flatten();
                    match (docker, cri) {
                        (Some(d), _) => (Some(d.stream), d.partial, d.message.into()),
                        (None, Some(c)) => (Some(c.stream), c.partial, c.message.into()),
                        (None, None) => (None, false, line.into()),
                    }
                }
            };
        let Some(stream_kind) = stream else {
            // A plain line is a message of its own; it does not touch pending partials.
            let (text, truncated) = if text.len() > self.max_len {
                (cut(&text, self.max_len).to_string(), true)
            } else {
                (text.into_owned(), false)
            };
            return Some(self.finish(
                Pending {
                    text,
                    parts: vec![tag],
                    truncated,
                },
                None,
            ));
        };
        let slot = match stream_kind {
            Stream::Stderr => 1,
            Stream::Stdout => 0,
        };
        let max_len = self.max_len;
        let pending = &mut self.pending[slot];
        let room = max_len.saturating_sub(pending.text.len());
        if text.len() > room {
            pending.text.push_str(cut(&text, room));
            pending.truncated = true;
        } else {
            pending.text.push_str(&text);
        }
        pending.parts.push(tag);
        if partial && pending.parts.len() < self.max_parts {
            return None;
        }
        let done = std::mem::take(pending);
        Some(self.finish(done, stream))
    }

    /// Emits whatever partial messages are pending (end of input).
    pub fn flush(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let pending = std::mem::take(&mut self.pending[slot]);
            if !pending.parts.is_empty() {
                out.push(self.finish(pending, Some(stream)));
            }
        }
        out
    }

    fn finish(&self, p: Pending, stream: Option<Stream>) -> Message {
        let text = if self.format == LogFormat::Plain {
            None
        } else {
            flatten_json(&p.text)
        };
        Message {
            text: text.unwrap_or(p.text),
            stream,
            parts: p.parts,
            truncated: p.truncated,
        }
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
