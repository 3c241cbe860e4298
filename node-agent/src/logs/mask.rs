//! Tokenising and masking: the first step of template mining.
//!
//! A line is split on whitespace, except that a double-quoted string (also `key="..."`)
//! stays one token. Each token is then masked: whatever is almost always a variable
//! (numbers, hex, IPs, UUIDs, dates and times, durations and sizes, paths, URLs, month and
//! weekday names) becomes `<*>`, keeping punctuation around it and the key of `key=value`,
//! so `(10.0.0.1:443),` becomes `(<*>),` and `took=12ms` becomes `took=<*>`. Words that mix
//! letters and digits keep their letter-only parts (`blk_-1608` → `blk_-<*>`).

use std::borrow::Cow;

/// The wildcard.
pub const WILDCARD: &str = "<*>";

/// Splits `line` into at most `max_tokens` tokens (the rest is folded into the last one).
pub fn tokenize(line: &str, max_tokens: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        if out.len() + 1 == max_tokens.max(1) {
            out.push(line[i..].trim_end());
            break;
        }
        let start = i;
        let mut end = next_space(bytes, i);
        // A quote opening the token (or its value) runs to its closing quote.
        let open = match bytes[start] {
            b'"' => Some(start),
            _ => line[start..end].find("=\"").map(|p| start + p + 1),
        };
        if let Some(q) = open
            && let Some(close) = line[q + 1..].find('"')
        {
            let close = q + 1 + close;
            if close >= end {
                end = next_space(bytes, close + 1);
            }
        }
        out.push(&line[start..end]);
        i = end;
    }
    out
}

/// Masks the fields of a Common or Combined Log Format access line (Apache, nginx and most
/// HTTP servers and proxies: `host ident authuser [date] "request" status bytes "referer"
/// "user-agent" ...`) that masking token by token leaves as words: `ident` and `authuser`
/// (`-`, `alice`) and the quoted fields (`"GET /a HTTP/1.1"`, `"-"`, `"curl/8.4.0"`). Every
/// field of such a line is a parameter of one event, "a request was served"; left as words
/// they would route it into a branch per user, method or client. `tokens` are masked
/// tokens; a line of any other shape is left alone.
pub fn mask_access_log(tokens: &mut [String]) {
    let date_open = |t: &str| t.starts_with('[') && !t.contains(']');
    let is_clf = tokens.len() >= 7
        && !tokens[0].contains('"')
        && (tokens[0] == WILDCARD || !tokens[0].contains(['[', '=']))
        && date_open(&tokens[3])
        && tokens[4].ends_with(']')
        && tokens[5].starts_with('"')
        && tokens[5].ends_with('"')
        && tokens[6] == WILDCARD;
    if is_clf {
        for t in &mut tokens[1..3] {
            if !t.contains('"') {
                *t = WILDCARD.to_string();
            }
        }
        for t in &mut tokens[5..] {
            if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
                *t = format!("\"{WILDCARD}\"");
            }
        }
    }
}

fn next_space(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// True when a (masked) token is a variable for routing: it holds a wildcard.
pub fn is_variable(token: &str) -> bool {
    token.contains(WILDCARD)
}

const MONTHS_DAYS: [&str; 19] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
    "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
];

/// Masks one token.
pub fn mask_token(token: &str) -> Cow<'_, str> {
    if token.is_empty() {
        return Cow::Borrowed(token);
    }
    // Quoted strings: mask inside the quotes, keep them.
    if token.len() >= 2 && token.starts_with('"') && token.ends_with('"') {
        let inner = &token[1..token.len() - 1];
        if inner.contains(char::is_whitespace) {
            return Cow::Owned(format!("\"{}\"", mask_phrase(inner)));
        }
    }
    // key=value: keep the key, mask the value.
    if let Some(eq) = token.find('=')
        && eq > 0
        && token[..eq]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        let value = &token[eq + 1..];
        let masked = mask_token(value);
        return match masked {
            Cow::Borrowed(_) => Cow::Borrowed(token),
            Cow::Owned(v) => Cow::Owned(format!("{}{}", &token[..=eq], v)),
        };
    }
    let lead = token.len()
        - token
            .trim_start_matches(['(', '[', '{', '<', '"', '\''])
            .len();
    let core_and_tail = &token[lead..];
    let core = core_and_tail
        .trim_end_matches([')', ']', '}', '>', '"', '\'', ',', ';', ':', '.', '!', '?']);
    if core.is_empty() {
        return Cow::Borrowed(token);
    }
    let (head, tail) = (&token[..lead], &core_and_tail[core.len()..]);
    match mask_core(core) {
        Cow::Borrowed(_) => Cow::Borrowed(token),
        Cow::Owned(m) => Cow::Owned(format!("{head}{m}{tail}")),
    }
}

/// Masks every whitespace-separated word of a phrase (inside quotes).
fn mask_phrase(s: &str) -> String {
    s.split_whitespace()
        .map(mask_token)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_core(core: &str) -> Cow<'_, str> {
    if MONTHS_DAYS.contains(&core) {
        return Cow::Owned(WILDCARD.to_string());
    }
    if core.contains("://") || is_path(core) || is_uuid(core) {
        return Cow::Owned(WILDCARD.to_string());
    }
    if !core.bytes().any(|b| b.is_ascii_digit()) {
        return Cow::Borrowed(core);
    }
    // Every alphanumeric run holds a digit (numbers, IPs, times, hex ids, 12ms, v1.2.3): all
    // of it is the value.
    let runs = || {
        core.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|r| !r.is_empty())
    };
    if runs()
        .all(|r| r.bytes().any(|b| b.is_ascii_digit()) || is_unit(r) || MONTHS_DAYS.contains(&r))
    {
        return Cow::Owned(WILDCARD.to_string());
    }
    // Mixed: mask the runs with digits (and month names), keep letter-only runs, then fold
    // neighbouring wildcards joined by separators.
    let mut out = String::with_capacity(core.len());
    let mut run_start = None;
    for (i, c) in core
        .char_indices()
        .chain(std::iter::once((core.len(), ' ')))
    {
        if c.is_ascii_alphanumeric() && i < core.len() {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = run_start.take() {
            let run = &core[start..i];
            if run.bytes().any(|b| b.is_ascii_digit()) || MONTHS_DAYS.contains(&run) {
                out.push_str(WILDCARD);
            } else {
                out.push_str(run);
            }
        }
        if i < core.len() {
            out.push(c);
        }
    }
    Cow::Owned(fold_wildcards(&drop_signs(&out)))
}

/// `blk_-<*>` → `blk_<*>`: a minus sign before a masked number belongs to the number.
fn drop_signs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    for (i, c) in s.char_indices() {
        let sign = c == '-'
            && s[i + 1..].starts_with(WILDCARD)
            && !prev.is_some_and(|p| p.is_ascii_alphanumeric());
        if !sign {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

/// `<*>.<*>:<*>` → `<*>`: wildcards joined only by separators are one value.
fn fold_wildcards(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(WILDCARD) {
        out.push_str(&rest[..pos]);
        out.push_str(WILDCARD);
        rest = &rest[pos + WILDCARD.len()..];
        loop {
            let sep_len = rest.len()
                - rest
                    .trim_start_matches(['.', ':', '-', '_', '/', ',', '+'])
                    .len();
            if sep_len > 0 && rest[sep_len..].starts_with(WILDCARD) {
                rest = &rest[sep_len + WILDCARD.len()..];
            } else {
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_unit(run: &str) -> bool {
    matches!(
        run,
        "ms" | "us"
            | "ns"
            | "s"
            | "m"
            | "h"
            | "d"
            | "B"
            | "KB"
            | "MB"
            | "GB"
            | "TB"
            | "KiB"
            | "MiB"
            | "GiB"
            | "k"
            | "K"
    )
}

fn is_path(core: &str) -> bool {
    let b = core.as_bytes();
    (b.len() >= 2
        && b[0] == b'/'
        && (b[1].is_ascii_alphanumeric() || matches!(b[1], b'_' | b'.' | b'-')))
        || core.starts_with("./")
        || core.starts_with("../")
        || core.starts_with("~/")
        || (b.len() > 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
}

fn is_uuid(core: &str) -> bool {
    let parts: Vec<&str> = core.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, want: &str) {
        let got: Vec<String> = tokenize(line, 256)
            .into_iter()
            .map(|t| mask_token(t).into_owned())
            .collect();
        assert_eq!(got.join(" "), want, "masking {line:?}");
    }

    #[test]
    fn masks_the_usual_variables() {
        check(
            "Connected to 10.0.0.1 port 443",
            "Connected to <*> port <*>",
        );
        check(
            "peer [fe80::1ff:fe23:4567:890a]:8080 closed",
            "peer [<*> closed",
        );
        check(
            "took 12.5ms, size=4KB, rate=1.5e3/s",
            "took <*>, size=<*>, rate=<*>",
        );
        check("req 550e8400-e29b-41d4-a716-446655440000 ok", "req <*> ok");
        check("req deadbeef-dead-beef-dead-beefdeadbeef ok", "req <*> ok");
        check("open /var/log/app.log failed", "open <*> failed");
        check("GET http://example.com/a?b=1 200", "GET <*> <*>");
        check(
            "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106",
            "Receiving block blk_<*> src: <*>",
        );
        check(
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: check pass;",
            "<*> <*> <*> combo sshd(pam_unix)[<*>]: check pass;",
        );
        check(
            "2024-01-01T00:00:00.123Z level=info user=alice",
            "<*> level=info user=alice",
        );
        check("pid 0x7fff5fbff8a8 at dn228/dn228", "pid <*> at <*>");
        check(
            r#"msg="connection reset by peer 10.1.1.1" code=104"#,
            r#"msg="connection reset by peer <*>" code=<*>"#,
        );
        check(
            r#"1.2.3.4 - - "GET /index.html HTTP/1.1" 200"#,
            r#"<*> - - "GET <*> HTTP/<*>" <*>"#,
        );
    }

    #[test]
    fn tokenizer_keeps_quotes_and_bounds_tokens() {
        assert_eq!(tokenize(r#"a "b c" d"#, 10), vec!["a", r#""b c""#, "d"]);
        assert_eq!(tokenize(r#"k="x y", z"#, 10), vec![r#"k="x y","#, "z"]);
        assert_eq!(
            tokenize(r#"unclosed "quote here"#, 10),
            vec!["unclosed", "\"quote", "here"]
        );
        assert_eq!(tokenize("a b c d e", 3), vec!["a", "b", "c d e"]);
        assert!(tokenize("   ", 3).is_empty());
        assert_eq!(tokenize("ünï cödé ✓", 10), vec!["ünï", "cödé", "✓"]);
    }
}
