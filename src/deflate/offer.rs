//! Negotiating permessage-deflate at the `/ws` handshake (RFC 7692 sections 5 and 7): the
//! client's `Sec-WebSocket-Extensions` offers, in its order of preference, and the answer.
//!
//! The server takes the first permessage-deflate offer whose parameters it can honour and
//! answers `permessage-deflate; server_no_context_takeover; client_no_context_takeover`,
//! with `server_max_window_bits=N` when the offer asked for it. Without context takeover
//! in either direction no connection keeps deflate state, and one compressed form of a
//! publication serves all its subscribers (the parent module). `client_no_context_takeover`
//! may be answered whether or not it was offered (RFC 7692, 7.1.1.1); `client_max_window_bits`
//! is never answered (allowed, 7.1.2.2): the server inflates whatever window the client uses.
//!
//! An offer with an unknown parameter, a parameter given twice or a value out of range is
//! declined, and the next offer is considered; a header that does not parse is ignored. The
//! extension header never fails a handshake: at worst the connection is not compressed.

/// The largest window, in bits (32 KiB): what a compressed form is made with.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The permessage-deflate configuration a connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The client may inflate our messages with a window of 2^bits bytes (8 to 15; 15 when
    /// the client set no limit). The server keeps to it by compressing only messages no
    /// longer than the window (a message compressed on its own never refers further back
    /// than its own start); longer ones go out uncompressed.
    pub server_max_window_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response(&self) -> String {
        let mut answer = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.server_max_window_bits < MAX_WINDOW_BITS {
            answer.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        answer
    }

    /// True when a message payload of `len` bytes may be sent compressed within the
    /// agreed window.
    pub fn fits_window(&self, len: usize) -> bool {
        self.server_max_window_bits >= MAX_WINDOW_BITS || len <= 1 << self.server_max_window_bits
    }
}

/// The first acceptable permessage-deflate offer in `headers` (the values of every
/// `Sec-WebSocket-Extensions` header of the request, in order), if any.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    headers
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, ','))
        .filter_map(|offer| accept(offer).ok().flatten())
        .next()
}

/// Why an offer is declined (for the tests; the handshake only takes the next one).
#[derive(Debug, PartialEq, Eq)]
enum Declined {
    /// Not `name[; param[=value]]...` with tokens and quoted strings.
    Malformed,
    /// A parameter permessage-deflate does not define.
    Unknown,
    /// A parameter given twice.
    Duplicate,
    /// A value the parameter does not take (or none where one is needed).
    BadValue,
}

/// `Ok(None)` for another extension, `Ok(Some(..))` for an acceptable permessage-deflate
/// offer.
fn accept(offer: &str) -> Result<Option<Agreed>, Declined> {
    let mut parts = split_outside_quotes(offer, ';');
    let name = parts.next().map(str::trim).unwrap_or("");
    if !is_token(name) {
        return Err(Declined::Malformed);
    }
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return Ok(None);
    }
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: MAX_WINDOW_BITS,
    };
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        if !is_token(key) {
            return Err(Declined::Malformed);
        }
        let which = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| key.eq_ignore_ascii_case(known))
        .ok_or(Declined::Unknown)?;
        if std::mem::replace(&mut seen[which], true) {
            return Err(Declined::Duplicate);
        }
        match (which, value.as_deref()) {
            // The two no-context-takeover flags take no value; we answer both anyway.
            (0 | 1, None) => {}
            (2, Some(v)) => agreed.server_max_window_bits = window_bits(v)?,
            // Bare: the client can take a limit, and we set none. With a value: the client
            // keeps to it, and any window inflates here.
            (3, None) => {}
            (3, Some(v)) => {
                window_bits(v)?;
            }
            _ => return Err(Declined::BadValue),
        }
    }
    Ok(Some(agreed))
}

/// A window size parameter: `8` to `15`, without leading zeros (RFC 7692, 7.1.2).
fn window_bits(value: &str) -> Result<u8, Declined> {
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) if !value.starts_with('0') && !value.starts_with('+') => Ok(bits),
        _ => Err(Declined::BadValue),
    }
}

/// A parameter value: a token, or a quoted string (whose content must then be a token,
/// RFC 7692 section 7).
fn unquote(value: &str) -> Result<String, Declined> {
    let inner = match value.strip_prefix('"') {
        None => value.to_string(),
        Some(rest) => {
            let body = rest.strip_suffix('"').ok_or(Declined::Malformed)?;
            let mut out = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().ok_or(Declined::Malformed)?),
                    '"' => return Err(Declined::Malformed),
                    c => out.push(c),
                }
            }
            out
        }
    };
    if is_token(&inner) {
        Ok(inner)
    } else {
        Err(Declined::Malformed)
    }
}

/// An HTTP token (RFC 7230, 3.2.6).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `s` split at each `sep` that is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&text[i + c.len_utf8()..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[&str]) -> Option<String> {
        negotiate(headers.iter().copied()).map(|a| a.response())
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_and_common_clients_offer_is_taken() {
        // Chromium and Firefox; Python `websockets`; Go and Java clients.
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=15",
            "Permessage-Deflate; Client_Max_Window_Bits",
        ] {
            assert_eq!(answer(&[offer]).as_deref(), Some(PLAIN), "{offer}");
        }
    }

    #[test]
    fn a_server_window_is_answered_and_kept() {
        let a = negotiate(["permessage-deflate; server_max_window_bits=10"]).expect("taken");
        assert_eq!(a.response(), format!("{PLAIN}; server_max_window_bits=10"));
        assert!(a.fits_window(1024));
        assert!(!a.fits_window(1025));
        let quoted = negotiate([r#"permessage-deflate; server_max_window_bits="8""#]);
        assert_eq!(quoted.map(|a| a.server_max_window_bits), Some(8));
        let full = negotiate(["permessage-deflate; server_max_window_bits=15"]).expect("taken");
        assert_eq!(full.response(), PLAIN);
        assert!(full.fits_window(1 << 30));
    }

    #[test]
    fn a_bad_offer_is_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; x-unknown",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            r#"permessage-deflate; server_max_window_bits="10"#,
            "permessage-deflate; =10",
            "permessage-deflate;;",
        ] {
            assert_eq!(answer(&[bad]), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            // An unbalanced quote swallows the rest of its header: nothing to take there.
            if !bad.contains('"') {
                assert_eq!(
                    answer(&[&two]),
                    Some(format!("{PLAIN}; server_max_window_bits=12")),
                    "{two}"
                );
            }
            assert_eq!(
                answer(&[bad, "permessage-deflate"]).as_deref(),
                Some(PLAIN),
                "{bad} then a second header"
            );
        }
        assert_eq!(accept("permessage-deflate; x=1"), Err(Declined::Unknown));
        assert_eq!(
            accept("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            Err(Declined::Duplicate)
        );
    }

    #[test]
    fn other_extensions_and_garbage_are_passed_over() {
        assert_eq!(answer(&[]), None);
        assert_eq!(answer(&[""]), None);
        assert_eq!(answer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(answer(&["foo; a=1, bar"]), None);
        assert_eq!(
            answer(&[r#"foo; a="x,y", permessage-deflate"#]).as_deref(),
            Some(PLAIN)
        );
        assert_eq!(
            answer(&["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
            Some(format!("{PLAIN}; server_max_window_bits=9"))
        );
        for garbage in [
            ",,,",
            ";",
            "\"",
            "é; permessage-deflate",
            "permessage deflate",
        ] {
            assert_eq!(answer(&[garbage]), None, "{garbage}");
        }
    }
}
