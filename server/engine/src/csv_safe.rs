//! CSV that a spreadsheet opens as data. Cells come from names the project did not choose
//! (uploaded file names, dataset paths, category folders), and a spreadsheet runs a cell that
//! starts with `=`, `+`, `-` or `@` as a formula (`=HYPERLINK(...)`, `@SUM(...)`), as well as one
//! that starts with a tab or carriage return before such a character: OWASP's "CSV injection".
//! [`Writer`] prefixes those cells with `'`, which spreadsheets show as text, and leaves numbers
//! (`-0.1250`, `+3`) as they are, so numeric columns stay numeric.

use std::borrow::Cow;

/// The first characters that make a spreadsheet read a cell as a formula.
const TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `cell` as a spreadsheet will show it literally: unchanged unless it starts like a formula
/// and is not a plain number, then prefixed with `'`.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    let risky = cell.starts_with(TRIGGERS);
    if risky && !is_number(cell) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// A finite decimal number as the project writes them (`-0.1234`, `+1`, `3e-5`).
fn is_number(cell: &str) -> bool {
    cell.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && cell.parse::<f64>().is_ok_and(f64::is_finite)
}

/// A [`csv::Writer`] that neutralises every cell it writes.
pub struct Writer<W: std::io::Write>(csv::Writer<W>);

impl<W: std::io::Write> Writer<W> {
    pub fn from_writer(w: W) -> Self {
        Self(csv::Writer::from_writer(w))
    }

    /// Writes one record, each cell through [`neutralise`].
    pub fn write_record<I, T>(&mut self, record: I) -> csv::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.0.write_record(
            record
                .into_iter()
                .map(|c| neutralise(c.as_ref()).into_owned()),
        )
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }

    /// The underlying writer, flushed.
    pub fn into_inner(self) -> std::io::Result<W> {
        self.0.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_become_text_and_numbers_stay_numbers() {
        for (cell, want) in [
            (
                "=HYPERLINK(\"http://x\",\"y\").png",
                "'=HYPERLINK(\"http://x\",\"y\").png",
            ),
            ("@SUM(1+1)cmd.png", "'@SUM(1+1)cmd.png"),
            ("+cmd.png", "'+cmd.png"),
            ("-2+3.png", "'-2+3.png"),
            ("\t=1+1", "'\t=1+1"),
            ("\r=1+1", "'\r=1+1"),
            ("-", "'-"),
            ("+", "'+"),
            ("cat/a=b.png", "cat/a=b.png"),
            ("", ""),
            ("-0.1250", "-0.1250"),
            ("+3", "+3"),
            ("-1e-3", "-1e-3"),
            ("0.9000", "0.9000"),
        ] {
            assert_eq!(neutralise(cell), want, "{cell:?}");
        }
        // A word that Rust would parse as a number is still a formula trigger.
        assert_eq!(neutralise("-inf"), "'-inf");
        assert_eq!(neutralise("-NaN"), "'-NaN");
    }

    #[test]
    fn the_writer_neutralises_every_cell_and_quotes_as_csv_does() {
        let mut w = Writer::from_writer(Vec::new());
        w.write_record(["=1+1", "a,b", "-0.5"]).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(text, "'=1+1,\"a,b\",-0.5\n");
    }
}
