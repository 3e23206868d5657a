//! Aligned columns, as ctr prints them with Go's tabwriter: every cell padded to its column's
//! width plus a fixed padding.

/// Rows of cells printed in aligned columns.
#[derive(Debug)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
    padding: usize,
}

/// An `ls`: with `quiet`, each item's `key` alone on a line and no table; else `table` to fill.
pub(crate) fn quiet_or<T>(
    quiet: bool,
    items: &[T],
    key: impl Fn(&T) -> &str,
    table: Table,
) -> Option<Table> {
    if quiet {
        for i in items {
            println!("{}", key(i));
        }
        return None;
    }
    Some(table)
}

impl Table {
    pub(crate) fn new(header: &[&str], padding: usize) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
            padding,
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                out.push_str(c);
                let pad = widths[i] - c.chars().count() + self.padding;
                out.extend(std::iter::repeat_n(' ', pad));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn aligns_like_tabwriter() {
        let mut t = Table::new(&["NAME", "LABELS"], 1);
        t.row(vec!["default".into(), "".into()]);
        t.row(vec!["k8s.io".into(), "a=b".into()]);
        assert_eq!(
            t.render(),
            "NAME    LABELS \ndefault        \nk8s.io  a=b    \n"
        );
    }
}
