//! SQL scripts from a repository (a plain-format dump, the globals of
//! `pg_dumpall`) fed to `psql` as data, never as commands for the host.
//!
//! psql runs backslash meta-commands from its input (`\!` runs a shell,
//! `\copy … to program`, `\o |cmd`, `\set` with backticks), so a script a
//! repository writer altered could run anything as refugio's user. Two
//! layers keep it out, either of which suffices:
//!
//! 1. psql's restricted mode (`\restrict KEY`, psql 13.22, 14.19, 15.14,
//!    16.10, 17.6 and later): refugio opens the input with its own random
//!    key and never closes it, so psql refuses every meta-command of the
//!    content, wherever it stands on a line. pg_dump's own `\restrict` /
//!    `\unrestrict` lines (which would clash with ours) are dropped.
//! 2. [`ScriptGuard`] reads the lines as they pass: a line that begins with
//!    a backslash outside `COPY … FROM stdin` data, other than pg_dump's
//!    restrict pair, stops the feed with [`Refused`] naming the line, so the
//!    error says what the content tried instead of psql's generic refusal.
//!
//! What pg_dump and pg_dumpall themselves emit passes unchanged.

use crate::tools::PgVersion;

/// The text psql (in the C locale refugio runs it with) prints when
/// restricted mode refuses a meta-command.
pub const RESTRICTED_MESSAGE: &str = "backslash commands are restricted";

/// Longest line the guard holds to decide on it: a meta-command (which
/// pg_dump keeps short) or a `COPY … FROM stdin;` header (up to 1,600
/// quoted column names).
const MAX_HELD_LINE: usize = 1 << 20;

/// Whether `psql` of this version has restricted mode (`\restrict`).
pub fn psql_can_restrict(v: PgVersion) -> bool {
    match v.major {
        0..=12 => false,
        13 => v.minor >= 22,
        14 => v.minor >= 19,
        15 => v.minor >= 14,
        16 => v.minor >= 10,
        17 => v.minor >= 6,
        _ => true,
    }
}

/// A line of the content that would have been a psql meta-command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is a psql meta-command ({command}), which neither pg_dump nor pg_dumpall writes there; refusing to feed it to psql")]
pub struct Refused {
    /// 1-based line number in the decompressed script.
    pub line: u64,
    /// The command word (`\!`, `\o`, …), cut to 40 printable characters.
    pub command: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// SQL: a backslash at the start of a line is a meta-command.
    Sql,
    /// Inside `COPY … FROM stdin;` data, until a line `\.`.
    CopyData,
}

/// The line-by-line check of a psql script (see the module docs). Feed it
/// the script in chunks of any size; it writes what psql should read.
#[derive(Debug)]
pub struct ScriptGuard {
    mode: Mode,
    /// The current line when it must be seen whole before it is passed on
    /// (it starts with `\` or `C`); None: passing the line straight through.
    held: Option<Vec<u8>>,
    at_line_start: bool,
    line: u64,
}

impl Default for ScriptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptGuard {
    pub fn new() -> Self {
        ScriptGuard {
            mode: Mode::Sql,
            held: None,
            at_line_start: true,
            line: 1,
        }
    }

    /// The opening of psql's input: restricted mode under `key` (random,
    /// alphanumeric, never written again so the content cannot close it).
    pub fn restrict_line(key: &str) -> String {
        format!("\\restrict {key}\n")
    }

    /// Passes `input` on to `out`, line by line.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        while !input.is_empty() {
            if self.at_line_start && self.held.is_none() {
                let first = input[0];
                let hold = match self.mode {
                    Mode::Sql => first == b'\\' || first == b'C',
                    Mode::CopyData => first == b'\\',
                };
                if hold {
                    self.held = Some(Vec::new());
                }
                self.at_line_start = false;
            }
            let newline = input.iter().position(|&b| b == b'\n');
            let end = newline.map_or(input.len(), |i| i + 1);
            let (part, rest) = input.split_at(end);
            input = rest;
            match self.held.as_mut() {
                Some(held) => {
                    held.extend_from_slice(part);
                    if held.len() > MAX_HELD_LINE && newline.is_none() {
                        // Too long for a meta-command or a COPY header:
                        // decide on what we have.
                        if held.first() == Some(&b'\\') && self.mode == Mode::Sql {
                            return Err(self.refused());
                        }
                        out.extend_from_slice(held);
                        self.held = None;
                    }
                }
                None => out.extend_from_slice(part),
            }
            if newline.is_some() {
                self.end_line(out)?;
            }
        }
        Ok(())
    }

    /// The end of the script: a last line without a newline is judged too.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Refused> {
        if self.held.is_some() {
            self.end_line(out)?;
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<u8>) -> Result<(), Refused> {
        if let Some(held) = self.held.take() {
            let text = trim_eol(&held);
            match self.mode {
                Mode::Sql if text.first() == Some(&b'\\') => {
                    if !is_restrict_pair(text) {
                        self.held = Some(held);
                        return Err(self.refused());
                    }
                    // pg_dump's own \restrict / \unrestrict: ours stands.
                }
                Mode::Sql => {
                    if is_copy_from_stdin(text) {
                        self.mode = Mode::CopyData;
                    }
                    out.extend_from_slice(&held);
                }
                Mode::CopyData => {
                    if text == b"\\." {
                        self.mode = Mode::Sql;
                    }
                    out.extend_from_slice(&held);
                }
            }
        }
        self.at_line_start = true;
        self.line += 1;
        Ok(())
    }

    fn refused(&self) -> Refused {
        let held = self.held.as_deref().unwrap_or_default();
        let word = held
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        let command: String = String::from_utf8_lossy(word)
            .chars()
            .filter(|c| !c.is_control())
            .take(40)
            .collect();
        Refused {
            line: self.line,
            command,
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `\restrict KEY` or `\unrestrict KEY`, as pg_dump writes them.
fn is_restrict_pair(line: &[u8]) -> bool {
    let key = line
        .strip_prefix(b"\\restrict ")
        .or_else(|| line.strip_prefix(b"\\unrestrict "));
    key.is_some_and(|k| !k.is_empty() && k.iter().all(u8::is_ascii_alphanumeric))
}

/// pg_dump's `COPY name (columns) FROM stdin;`.
fn is_copy_from_stdin(line: &[u8]) -> bool {
    line.starts_with(b"COPY ") && line.ends_with(b" FROM stdin;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str, chunk: usize) -> Result<String, Refused> {
        let mut g = ScriptGuard::new();
        let mut out = Vec::new();
        for part in script.as_bytes().chunks(chunk.max(1)) {
            g.push(part, &mut out)?;
        }
        g.finish(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abcXYZ09\n\nSET x = 1;\nCREATE TABLE public.t (a text);\nCOPY public.t (a) FROM stdin;\n\\\\x\nplain\n\\N\n\\.\n\nCREATE INDEX i ON public.t (a);\n\n\\unrestrict abcXYZ09\n";

    #[test]
    fn pg_dumps_own_output_passes_without_its_restrict_pair() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let out = run(DUMP, chunk).unwrap();
            assert!(!out.contains("restrict"), "chunk {chunk}: {out}");
            assert_eq!(
                out,
                DUMP.replace("\\restrict abcXYZ09\n", "")
                    .replace("\\unrestrict abcXYZ09\n", ""),
                "chunk {chunk}"
            );
        }
    }

    #[rstest::rstest]
    #[case("SELECT 1;\n\\! touch /tmp/x\n", 2, "\\!")]
    #[case("SELECT 1;\n\\o |sh\nSELECT 2;\n", 2, "\\o")]
    #[case("\\copy t to program 'sh'", 1, "\\copy")]
    #[case("\\restrict ab\n\\unrestrict ab\n\\unrestrict\n", 3, "\\unrestrict")]
    #[case("\\restrict a-b\n", 1, "\\restrict")]
    // After the end of COPY data, a backslash line is a command again.
    #[case("COPY t (a) FROM stdin;\n\\N\n\\.\n\\! id\n", 4, "\\!")]
    // A line that only looks like a COPY header does not open data mode.
    #[case("COPY t FROM stdin; -- no\n\\! id\n", 2, "\\!")]
    fn meta_commands_are_refused_naming_the_line(
        #[case] script: &str,
        #[case] line: u64,
        #[case] command: &str,
    ) {
        for chunk in [1, 5, 4096] {
            let e = run(script, chunk).unwrap_err();
            assert_eq!((e.line, e.command.as_str()), (line, command), "{script:?}");
        }
    }

    #[test]
    fn backslashes_inside_copy_data_are_data() {
        let s = "COPY t (a) FROM stdin;\n\\! not a command, data\n\\.\n";
        assert_eq!(run(s, 3).unwrap(), s);
    }

    #[test]
    fn restricted_mode_arrived_in_these_minor_releases() {
        let v = |major, minor| PgVersion { major, minor };
        assert!(!psql_can_restrict(v(16, 9)));
        assert!(psql_can_restrict(v(16, 10)));
        assert!(!psql_can_restrict(v(15, 13)));
        assert!(psql_can_restrict(v(15, 14)));
        assert!(psql_can_restrict(v(18, 0)));
        assert!(!psql_can_restrict(v(12, 30)));
    }
}
