//! Reading a restore's failure by SQLSTATE, not by its words: a server's
//! messages are in its `lc_messages`, a tool's in the host's locale, and
//! only the five-character code means the same everywhere.
//!
//! Where the code comes from: psql prints it with `VERBOSITY=verbose`
//! (`ERROR:  42601: …`); pg_restore never prints it, so for a server
//! refugio runs itself (an ephemeral drill cluster) it is read from the
//! server's log, written with [`crate::OWN_SERVER_LOG_PREFIX`]. On any
//! other server a pg_restore failure has no code, and proves nothing.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Whether `code` says the server refused the content itself, as opposed
/// to the environment failing it (resources, connections, permissions, what
/// the backup needs from outside it):
///
/// - class 22, data exception (a value its column's type rejects, bad
///   bytes for the encoding), except 22P05 (untranslatable character: the
///   target's encoding cannot hold it);
/// - class 23, integrity constraint violation (the restored data breaks
///   its own constraints: the backup does not restore as it was taken);
/// - class 42, syntax error or access rule violation, except 42501
///   (insufficient privilege: the restoring role's rights), 42704
///   (undefined object: a role or extension type the target lacks,
///   outside the backup) and 42883 (undefined function: likewise an
///   extension's), and the `duplicate_*` codes (the target was not
///   empty).
///
/// Everything else — 08 connection, 53 insufficient resources (disk
/// full), 57 operator intervention (shutdown, cancel), 58 system error
/// (an extension's files), 40 rollback, 2B dependent objects, XX
/// internal — is not proof against the backup.
pub fn refuses_content(code: &str) -> bool {
    const NOT_CONTENT: &[&str] = &[
        "22P05", "42501", "42704", "42883", "42P03", "42P04", "42P05", "42P06", "42P07", "42710",
        "42712", "42723",
    ];
    if code.len() != 5 || NOT_CONTENT.contains(&code) {
        return false;
    }
    matches!(&code[..2], "22" | "23" | "42")
}

/// Whether `code` is an error's (not success 00, warning 01, no data 02).
fn is_error(code: &str) -> bool {
    !matches!(&code[..2], "00" | "01" | "02")
}

fn is_code(s: &str) -> bool {
    s.len() == 5
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// The SQLSTATE of each error psql printed with `VERBOSITY=verbose`, in
/// order: lines `[psql:<stdin>:N: ]SEVERITY:  CODE: message`, the
/// severity in any language.
pub fn in_psql_output(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(at) = line.find(":  ") else {
            continue;
        };
        let severity = line[..at].rsplit([' ', ':']).next().unwrap_or("");
        let rest = &line[at + 3..];
        let code = rest.get(..5).unwrap_or("");
        if !severity.is_empty()
            && severity.chars().all(char::is_uppercase)
            && is_code(code)
            && rest[5..].starts_with(':')
            && is_error(code)
        {
            out.push(code.to_string());
        }
    }
    out
}

/// The SQLSTATE of the first error a refugio session logged in `log`
/// (written with [`crate::OWN_SERVER_LOG_PREFIX`]) after byte `from`.
pub fn first_in_log(log: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    first_in_log_text(&String::from_utf8_lossy(&bytes))
}

fn first_in_log_text(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let at = line.find("sqlstate=")?;
        let code = line.get(at + 9..at + 14)?;
        let app = line[at + 14..].strip_prefix(" app=")?;
        (app.starts_with("refugio") && is_code(code) && is_error(code)).then(|| code.to_string())
    })
}

/// The length of `log` now: where the lines of what starts next begin.
pub fn log_mark(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_codes() {
        for c in [
            "42601", "42P01", "42703", "22P02", "22003", "22021", "23505", "23503",
        ] {
            assert!(refuses_content(c), "{c}");
        }
        for c in [
            "53100", "53200", "57P01", "57014", "08006", "58P01", "42501", "42704", "42883",
            "42P07", "42710", "22P05", "XX000", "2BP01", "40001", "",
        ] {
            assert!(!refuses_content(c), "{c}");
        }
    }

    #[test]
    fn psql_verbose_errors_in_any_language() {
        let text = "psql:<stdin>:3: ERROR:  42601: error de sintaxis en o cerca de «selec»\n\
                    LINE 1: selec 1\n\
                    LOCATION:  scanner_yyerror, scan.l:1188\n\
                    psql:<stdin>:9: FEHLER:  53100: konnte Datei nicht erweitern\n\
                    DETAIL:  Key (a)=(1) already exists.\n\
                    psql:<stdin>:4: WARNING:  01000: only a warning\n";
        assert_eq!(in_psql_output(text), vec!["42601", "53100"]);
        assert!(in_psql_output("psql: error: connection to server failed").is_empty());
    }

    #[test]
    fn first_error_of_a_refugio_session_in_the_log() {
        let log = "2025-01-01 00:00:00.000 UTC [10] LOG:  checkpoint starting\n\
                   2025-01-01 00:00:00.000 UTC [11] sqlstate=00000 app=refugio: LOG:  statement\n\
                   2025-01-01 00:00:00.000 UTC [12] sqlstate=42601 app=psql: ERROR:  not ours\n\
                   2025-01-01 00:00:00.000 UTC [11] sqlstate=53100 app=refugio: ERROR:  could not extend file\n\
                   2025-01-01 00:00:00.000 UTC [11] sqlstate=53100 app=refugio: STATEMENT:  COPY\n";
        assert_eq!(first_in_log_text(log).as_deref(), Some("53100"));
        assert_eq!(first_in_log_text("nothing here"), None);
    }
}
