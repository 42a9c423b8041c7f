//! The one table layout of the CLI (`audit`, `discover`, `plan`): columns two spaces apart,
//! each as wide as its widest cell, every cell fitted to its column's width limit first.

use crate::domain::{printable, table_cell, table_cell_tail};

/// How a column fits a cell: what keeps one 20 000-character name from widening every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// At most [`crate::domain::CELL_CHARS`] characters, the start kept
    /// ([`crate::domain::table_cell`]): names, groups, commands.
    Head,
    /// At most [`crate::domain::CELL_CHARS`] characters, the end kept
    /// ([`crate::domain::table_cell_tail`]): department paths, whose last names tell
    /// siblings apart.
    Tail,
    /// The whole text with terminal controls escaped ([`crate::domain::printable`]): short
    /// words and numbers, and cells built from parts fitted already.
    Whole,
}

impl Fit {
    fn apply(self, text: &str) -> String {
        match self {
            Fit::Head => table_cell(text).into_owned(),
            Fit::Tail => table_cell_tail(text).into_owned(),
            Fit::Whole => printable(text).into_owned(),
        }
    }
}

/// A header and rows. A row with fewer cells than the header ends early: its last cell
/// runs on past the columns it does not fill and widens none of them.
#[derive(Debug, Clone)]
pub struct Table {
    fits: Vec<Fit>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with `header` (printed as it is) and one [`Fit`] per column.
    pub fn new(header: &[&str], fits: &[Fit]) -> Self {
        debug_assert_eq!(header.len(), fits.len());
        Self {
            fits: fits.to_vec(),
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row, each cell fitted by its column.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        let row = cells
            .iter()
            .zip(&self.fits)
            .map(|(cell, fit)| fit.apply(cell.as_ref()))
            .collect();
        self.rows.push(row);
    }

    /// Adds a row whose cells the caller fitted (a cell that breaks its column's rule on
    /// purpose, such as an error message in a row of its own).
    pub fn row_fitted(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The lines, each without trailing spaces and ending in `\n`.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter(|r| r.len() > i + 1)
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i].saturating_sub(cell.chars().count()) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CELL_CHARS;

    #[test]
    fn columns_are_as_wide_as_their_widest_fitted_cell_and_a_short_row_runs_on() {
        let mut t = Table::new(&["a", "b", "c"], &[Fit::Head, Fit::Tail, Fit::Whole]);
        t.row(&["x".repeat(100), "y".repeat(100), "z\u{1b}".to_owned()]);
        t.row_fitted(vec!["1".into(), "a cell much longer than the column".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("a{}b{}c", " ".repeat(CELL_CHARS + 1), " ".repeat(CELL_CHARS + 1))
        );
        assert_eq!(
            lines[1],
            format!(
                "{}…  …{}  z\\u{{1b}}",
                "x".repeat(CELL_CHARS - 1),
                "y".repeat(CELL_CHARS - 1)
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "1{}a cell much longer than the column",
                " ".repeat(CELL_CHARS + 1)
            )
        );
    }
}
