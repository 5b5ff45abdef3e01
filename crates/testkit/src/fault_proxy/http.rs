//! Just enough HTTP/1.1 for the fault proxy: message heads, body framing
//! (`Content-Length`, `chunked`, until EOF) and copying a body through
//! unchanged while counting, pacing and possibly cutting it.

use std::io::{self, Read, Write};
use std::time::Duration;

/// Bytes a connection reads at once, and the largest piece written at once.
pub(super) const CHUNK: usize = 64 * 1024;
/// The largest message head (request or status line plus headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 8 * 1024;

/// Why a message could not be read or forwarded.
#[derive(Debug)]
pub(super) enum Stop {
    /// Reading from the sending side failed, or it ended mid-message.
    Read(io::Error),
    /// Writing to the receiving side failed.
    Write(io::Error),
    /// The bytes are not HTTP/1.1 as this proxy understands it.
    Malformed(&'static str),
    /// The byte budget of a reset fault is used up.
    Cut,
    /// The proxy stops, or the connection was closed under it.
    Abandoned,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Read(e) => write!(f, "reading: {e}"),
            Stop::Write(e) => write!(f, "writing: {e}"),
            Stop::Malformed(what) => write!(f, "malformed HTTP: {what}"),
            Stop::Cut => f.write_str("cut by a reset fault"),
            Stop::Abandoned => f.write_str("abandoned"),
        }
    }
}

/// A stream with a read buffer, so that bytes read past a message head stay
/// available for its body (or the next message).
pub(super) struct Conn<S> {
    stream: S,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<S: Read> Conn<S> {
    pub(super) fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: vec![0; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub(super) fn into_inner(self) -> S {
        self.stream
    }

    pub(super) fn get_ref(&self) -> &S {
        &self.stream
    }

    pub(super) fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Buffered bytes, reading more when there are none; empty at EOF.
    pub(super) fn available(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = loop {
                match self.stream.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
        }
        Ok(&self.buf[self.start..self.end])
    }

    /// Whether bytes are buffered, not yet consumed.
    pub(super) fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// A message head, through its empty line; `None` at EOF before its
    /// first byte (the peer closed an idle connection).
    pub(super) fn read_head(&mut self) -> Result<Option<Vec<u8>>, Stop> {
        let mut head = Vec::new();
        loop {
            let old = head.len();
            let avail = self.available().map_err(Stop::Read)?;
            if avail.is_empty() {
                return if old == 0 {
                    Ok(None)
                } else {
                    Err(Stop::Read(io::ErrorKind::UnexpectedEof.into()))
                };
            }
            let take = avail.len().min(MAX_HEAD + 4 - old);
            head.extend_from_slice(&avail[..take]);
            let from = old.saturating_sub(3);
            if let Some(at) = find(&head[from..], b"\r\n\r\n") {
                let len = from + at + 4;
                head.truncate(len);
                self.consume(len - old);
                return Ok(Some(head));
            }
            self.consume(take);
            if head.len() > MAX_HEAD {
                return Err(Stop::Malformed("message head too long"));
            }
        }
    }

    /// One line through its `\n` (chunk sizes, trailers).
    fn read_line(&mut self) -> Result<Vec<u8>, Stop> {
        let mut line = Vec::new();
        loop {
            let avail = self.available().map_err(Stop::Read)?;
            if avail.is_empty() {
                return Err(Stop::Read(io::ErrorKind::UnexpectedEof.into()));
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            line.extend_from_slice(&avail[..take]);
            self.consume(take);
            if done {
                return Ok(line);
            }
            if line.len() > MAX_LINE {
                return Err(Stop::Malformed("chunked body line too long"));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilEof,
}

/// What the proxy needs from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHead {
    pub(super) method: String,
    /// The request target as sent: path, then `?` and the query if any.
    pub(super) target: String,
    pub(super) framing: Framing,
    /// `Expect: 100-continue`: the client may wait for `100 Continue`
    /// before it sends the body.
    pub(super) expects_continue: bool,
    /// The client closes the connection after this exchange.
    pub(super) close: bool,
}

impl RequestHead {
    pub(super) fn parse(head: &[u8]) -> Result<RequestHead, Stop> {
        let (first, headers) = split_head(head)?;
        let mut parts = first.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Stop::Malformed("bad request line"));
        };
        if method.is_empty() || !version.starts_with("HTTP/1.") {
            return Err(Stop::Malformed("bad request line"));
        }
        let framing = match body_framing(&headers)? {
            Some(framing) => framing,
            None => Framing::Empty,
        };
        Ok(RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            framing,
            expects_continue: header(&headers, "expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
            close: closes(version, &headers),
        })
    }

    /// The target's path (before `?`).
    pub(super) fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The target's query (after `?`), empty if none.
    pub(super) fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// What the proxy needs from a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The server closes the connection after this response.
    pub(super) close: bool,
}

impl ResponseHead {
    /// `request_method` decides whether there is a body (none after HEAD).
    pub(super) fn parse(head: &[u8], request_method: &str) -> Result<ResponseHead, Stop> {
        let (first, headers) = split_head(head)?;
        let mut parts = first.splitn(3, ' ');
        let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
            return Err(Stop::Malformed("bad status line"));
        };
        let status: u16 = status
            .parse()
            .map_err(|_| Stop::Malformed("bad status code"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(Stop::Malformed("bad status line"));
        }
        let framing = if request_method == "HEAD"
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Framing::Empty
        } else {
            body_framing(&headers)?.unwrap_or(Framing::UntilEof)
        };
        Ok(ResponseHead {
            status,
            framing,
            close: framing == Framing::UntilEof || closes(version, &headers),
        })
    }

    /// An interim response (`100 Continue`); the final one follows.
    pub(super) fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

type Headers<'a> = Vec<(&'a str, &'a str)>;

fn split_head(head: &[u8]) -> Result<(&str, Headers<'_>), Stop> {
    let text = std::str::from_utf8(head).map_err(|_| Stop::Malformed("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(Stop::Malformed("header line without ':'"))?;
        headers.push((name.trim(), value.trim()));
    }
    Ok((first, headers))
}

fn header<'a>(headers: &Headers<'a>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn has_token(headers: &Headers<'_>, name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `None` when the head declares neither a length nor chunked coding.
fn body_framing(headers: &Headers<'_>) -> Result<Option<Framing>, Stop> {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(Some(Framing::Chunked));
    }
    match header(headers, "content-length") {
        Some(len) => len
            .parse()
            .map(|n| Some(Framing::Length(n)))
            .map_err(|_| Stop::Malformed("bad Content-Length")),
        None => Ok(None),
    }
}

fn closes(version: &str, headers: &Headers<'_>) -> bool {
    has_token(headers, "connection", "close")
        || (version == "HTTP/1.0" && !has_token(headers, "connection", "keep-alive"))
}

/// Where forwarded bytes go: a stream (or nowhere, to drain a body), paced
/// to a byte rate that may change, and with an optional budget of body
/// bytes after which it stops with [`Stop::Cut`].
pub(super) struct Out<'a, W> {
    to: Option<&'a mut W>,
    budget: Option<u64>,
    rate: &'a dyn Fn() -> Pace,
}

/// What the pacing asks for before the next piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// At full speed.
    Free,
    /// At most this many bytes per second.
    Rate(u64),
    /// Give up: the proxy stops or the connection was closed.
    Abandon,
}

impl<'a, W: Write> Out<'a, W> {
    pub(super) fn new(to: &'a mut W, budget: Option<u64>, rate: &'a dyn Fn() -> Pace) -> Self {
        Out {
            to: Some(to),
            budget,
            rate,
        }
    }

    /// Bytes that are not body bytes: they do not count against the budget.
    pub(super) fn head(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.write(bytes)
    }

    /// Whether `n` more body bytes fit in the budget.
    fn fits(&self, n: usize) -> bool {
        self.budget.is_none_or(|left| n as u64 <= left)
    }

    /// Body bytes: written up to the budget, then [`Stop::Cut`].
    fn body(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        match self.budget {
            Some(left) if (bytes.len() as u64) > left => {
                self.write(&bytes[..left as usize])?;
                self.budget = Some(0);
                Err(Stop::Cut)
            }
            Some(left) => {
                self.budget = Some(left - bytes.len() as u64);
                self.write(bytes)
            }
            None => self.write(bytes),
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), Stop> {
        while !bytes.is_empty() {
            let pace = (self.rate)();
            let piece = match pace {
                Pace::Abandon => return Err(Stop::Abandoned),
                Pace::Free => bytes.len(),
                // Twenty pieces a second: smooth enough, few wake-ups.
                Pace::Rate(rate) => bytes.len().min((rate / 20).clamp(1, CHUNK as u64) as usize),
            };
            if let Some(to) = self.to.as_mut() {
                to.write_all(&bytes[..piece]).map_err(Stop::Write)?;
            }
            if let Pace::Rate(rate) = pace {
                std::thread::sleep(Duration::from_secs_f64(piece as f64 / rate as f64));
            }
            bytes = &bytes[piece..];
        }
        Ok(())
    }
}

impl<'a> Out<'a, io::Sink> {
    /// Reads a body and throws it away.
    pub(super) fn discard(rate: &'a dyn Fn() -> Pace) -> Self {
        Out {
            to: None,
            budget: None,
            rate,
        }
    }
}

/// Copies one message, `head` and then its body (framing included) from
/// `from`, to `out`. `last` runs just before the message's last bytes go out
/// (at EOF for a body delimited by it), and only if they all will: so what
/// it counts is counted before the receiver can see the message whole.
pub(super) fn copy_message<R: Read, W: Write>(
    head: &[u8],
    from: &mut Conn<R>,
    framing: Framing,
    out: &mut Out<'_, W>,
    last: &mut dyn FnMut(),
) -> Result<(), Stop> {
    if matches!(framing, Framing::Empty | Framing::Length(0)) {
        last();
        return out.head(head);
    }
    out.head(head)?;
    copy_body(from, framing, out, last)
}

/// Reads one body from `from` and drops it.
pub(super) fn drain_body<R: Read>(
    from: &mut Conn<R>,
    framing: Framing,
    pace: &dyn Fn() -> Pace,
) -> Result<(), Stop> {
    copy_body(from, framing, &mut Out::discard(pace), &mut || {})
}

fn copy_body<R: Read, W: Write>(
    from: &mut Conn<R>,
    framing: Framing,
    out: &mut Out<'_, W>,
    last: &mut dyn FnMut(),
) -> Result<(), Stop> {
    match framing {
        Framing::Empty => {
            last();
            Ok(())
        }
        Framing::Length(len) => copy_exact(from, len, out, Some(last)),
        Framing::UntilEof => loop {
            let avail = from.available().map_err(Stop::Read)?;
            if avail.is_empty() {
                last();
                return Ok(());
            }
            let n = avail.len();
            let result = out.body(avail);
            from.consume(n);
            result?;
        },
        Framing::Chunked => loop {
            let line = from.read_line()?;
            out.body(&line)?;
            let size = std::str::from_utf8(&line)
                .ok()
                .map(|l| l.split(';').next().unwrap_or_default().trim())
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .ok_or(Stop::Malformed("bad chunk size"))?;
            if size == 0 {
                // Trailers, through the empty line.
                loop {
                    let line = from.read_line()?;
                    let end = line == b"\r\n" || line == b"\n";
                    if end && out.fits(line.len()) {
                        last();
                    }
                    out.body(&line)?;
                    if end {
                        return Ok(());
                    }
                }
            }
            // The chunk's data and its CRLF.
            copy_exact(from, size + 2, out, None)?;
        },
    }
}

fn copy_exact<R: Read, W: Write>(
    from: &mut Conn<R>,
    mut len: u64,
    out: &mut Out<'_, W>,
    mut last: Option<&mut dyn FnMut()>,
) -> Result<(), Stop> {
    while len > 0 {
        let avail = from.available().map_err(Stop::Read)?;
        if avail.is_empty() {
            return Err(Stop::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        let n = avail.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        if n as u64 == len && out.fits(n) {
            if let Some(last) = last.take() {
                last();
            }
        }
        let result = out.body(&avail[..n]);
        from.consume(n);
        result?;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    fn free() -> Pace {
        Pace::Free
    }

    #[test]
    fn request_heads() {
        let head = b"PUT /b/k?x-id=UploadPart&partNumber=2 HTTP/1.1\r\nHost: x\r\n\
            content-length: 12\r\nExpect: 100-continue\r\n\r\n";
        let req = RequestHead::parse(head).expect("parses");
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path(), "/b/k");
        assert_eq!(req.query(), "x-id=UploadPart&partNumber=2");
        assert_eq!(req.framing, Framing::Length(12));
        assert!(req.expects_continue && !req.close);

        let req = RequestHead::parse(
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        )
        .expect("parses");
        assert_eq!((req.path(), req.query()), ("/b", ""));
        assert_eq!(req.framing, Framing::Chunked);
        assert!(req.close);

        let req = RequestHead::parse(b"GET / HTTP/1.0\r\n\r\n").expect("parses");
        assert_eq!(req.framing, Framing::Empty);
        assert!(req.close);

        assert!(RequestHead::parse(b"GET /\r\n\r\n").is_err());
        assert!(RequestHead::parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn response_heads() {
        let parse = |head: &[u8], method| ResponseHead::parse(head, method).expect("parses");
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET");
        assert_eq!(
            (r.status, r.framing, r.close),
            (200, Framing::Length(5), false)
        );
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD");
        assert_eq!(r.framing, Framing::Empty);
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\n", "PUT");
        assert!(r.is_interim() && r.framing == Framing::Empty);
        let r = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", "GET");
        assert_eq!((r.framing, r.close), (Framing::UntilEof, true));
        let r = parse(
            b"HTTP/1.1 503 Slow Down\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!((r.status, r.framing), (503, Framing::Chunked));
    }

    /// A writer whose bytes stay readable while it is borrowed.
    #[derive(Clone, Default)]
    struct Recorder(Rc<RefCell<Vec<u8>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn len(&self) -> usize {
            self.0.borrow().len()
        }
    }

    /// Copies the message after `head` from `wire` with a byte budget;
    /// returns the result, what was written, and how much of it was
    /// written when `last` ran (if it did).
    fn copy(
        head: &[u8],
        wire: impl Read,
        framing: Framing,
        budget: Option<u64>,
    ) -> (Result<(), Stop>, Vec<u8>, Option<usize>) {
        let mut conn = Conn::new(wire);
        let recorder = Recorder::default();
        let mut to = recorder.clone();
        let mut last_at = None;
        let result = copy_message(
            head,
            &mut conn,
            framing,
            &mut Out::new(&mut to, budget, &free),
            &mut || last_at = Some(recorder.len()),
        );
        let written = recorder.0.borrow().clone();
        (result, written, last_at)
    }

    #[test]
    fn heads_and_bodies_split_anywhere_are_copied_unchanged() {
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let wire = [
            &b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            chunked,
            b"GET /next HTTP/1.1\r\n\r\n",
        ]
        .concat();
        // One byte per read: every boundary falls everywhere.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut conn = Conn::new(Trickle(&wire));
        let head = conn.read_head().expect("reads").expect("a head");
        let req = RequestHead::parse(&head).expect("parses");
        let mut body = Vec::new();
        let mut lasts = 0;
        copy_message(
            b"",
            &mut conn,
            req.framing,
            &mut Out::new(&mut body, None, &free),
            &mut || lasts += 1,
        )
        .expect("copies");
        assert_eq!(body, chunked);
        assert_eq!(lasts, 1);
        let next = conn.read_head().expect("reads").expect("a head");
        assert_eq!(next, b"GET /next HTTP/1.1\r\n\r\n");
        assert!(conn.read_head().expect("reads").is_none());
    }

    #[test]
    fn last_runs_just_before_the_final_bytes_of_a_whole_message() {
        let (result, got, last_at) = copy(b"head", &[7u8; 100][..], Framing::Length(100), None);
        assert!(result.is_ok());
        assert_eq!((got.len(), last_at), (104, Some(4)));

        let (result, got, last_at) = copy(b"head", &[][..], Framing::Empty, None);
        assert!(result.is_ok());
        assert_eq!((got.len(), last_at), (4, Some(0)));

        let chunked = b"3\r\nabc\r\n0\r\n\r\n";
        let (result, got, last_at) = copy(b"head", &chunked[..], Framing::Chunked, None);
        assert!(result.is_ok());
        assert_eq!(
            (got.len(), last_at),
            (4 + chunked.len(), Some(4 + chunked.len() - 2))
        );

        let (result, got, last_at) = copy(b"head", &b"until eof"[..], Framing::UntilEof, None);
        assert!(result.is_ok());
        assert_eq!((got.len(), last_at), (13, Some(13)));
    }

    #[test]
    fn a_budget_cuts_the_body_after_exactly_its_bytes() {
        let (result, got, last_at) = copy(b"head", &[7u8; 100][..], Framing::Length(100), Some(42));
        assert!(matches!(result, Err(Stop::Cut)), "{result:?}");
        assert_eq!((got.len(), last_at), (4 + 42, None));

        let chunked = b"3\r\nabc\r\n0\r\n\r\n";
        let budget = chunked.len() as u64 - 1;
        let (result, got, last_at) = copy(b"", &chunked[..], Framing::Chunked, Some(budget));
        assert!(matches!(result, Err(Stop::Cut)), "{result:?}");
        assert_eq!((got.len(), last_at), (chunked.len() - 1, None));

        // A body within the budget arrives whole.
        let (result, got, last_at) = copy(b"", &[7u8; 10][..], Framing::Length(10), Some(10));
        assert!(result.is_ok());
        assert_eq!((got.len(), last_at), (10, Some(0)));
    }

    #[test]
    fn a_short_body_is_an_error() {
        let (result, got, last_at) = copy(b"", &b"abc"[..], Framing::Length(5), None);
        assert!(matches!(result, Err(Stop::Read(_))), "{result:?}");
        assert_eq!((got.len(), last_at), (3, None));
        let mut conn = Conn::new(&b"abc"[..]);
        assert!(drain_body(&mut conn, Framing::Length(5), &free).is_err());
    }
}
