//! Labelled texts from a tab-separated file, one `label<TAB>text` per line (the layout of
//! `models/fetch genres`, and what a spreadsheet exports): the text classifier's training
//! and test data. Class names are kept as written; their order is the sorted set of names
//! unless the caller fixes it (a model file's classes).

use std::path::Path;

use super::DataError;

/// Texts with one class each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledText {
    /// The texts.
    pub texts: Vec<String>,
    /// Each text's class, an index into `classes`.
    pub labels: Vec<u32>,
    /// The class names.
    pub classes: Vec<String>,
}

impl LabelledText {
    /// Parses `label<TAB>text` lines (empty lines skipped). With `classes`, only texts of
    /// those classes are kept and labels index that list; without, every class is kept and
    /// the classes are the sorted set of names. `origin` names the source in errors.
    pub fn parse(
        tsv: &str,
        classes: Option<&[String]>,
        origin: &str,
    ) -> Result<LabelledText, DataError> {
        let mut rows = Vec::new();
        for (i, line) in tsv.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (label, text) = line.split_once('\t').ok_or_else(|| DataError::Text {
                origin: origin.to_string(),
                why: format!("line {} has no tab between label and text", i + 1),
            })?;
            if label.is_empty() || text.trim().is_empty() {
                return Err(DataError::Text {
                    origin: origin.to_string(),
                    why: format!("line {} has an empty label or text", i + 1),
                });
            }
            rows.push((label, text.trim()));
        }
        let classes: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => {
                let mut c: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
                c.sort();
                c.dedup();
                c
            }
        };
        let mut out = LabelledText {
            texts: Vec::new(),
            labels: Vec::new(),
            classes,
        };
        for (label, text) in rows {
            if let Some(c) = out.classes.iter().position(|c| c == label) {
                out.texts.push(text.to_string());
                out.labels.push(c as u32);
            }
        }
        Ok(out)
    }

    /// Reads and parses `path` (see [`LabelledText::parse`]).
    pub fn read(path: &Path, classes: Option<&[String]>) -> Result<LabelledText, DataError> {
        let tsv = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&tsv, classes, &path.display().to_string())
    }

    /// The indices of the texts of class `c`, in file order.
    pub fn of_class(&self, c: u32) -> Vec<usize> {
        (0..self.labels.len())
            .filter(|&i| self.labels[i] == c)
            .collect()
    }

    /// The texts and labels at `indices`, in that order (same classes).
    pub fn subset(&self, indices: &[usize]) -> LabelledText {
        LabelledText {
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_filters_classes() {
        let tsv = "news\tOslo.\n\nromance\tShe smiled.\nnews\tRain.\n";
        let all = LabelledText::parse(tsv, None, "t").unwrap();
        assert_eq!(all.classes, ["news", "romance"]);
        assert_eq!(all.labels, [0, 1, 0]);
        assert_eq!(all.of_class(0), [0, 2]);
        let only = ["romance".to_string()];
        let some = LabelledText::parse(tsv, Some(&only), "t").unwrap();
        assert_eq!(
            (some.texts.as_slice(), some.labels.as_slice()),
            (&["She smiled.".to_string()][..], &[0][..])
        );
        assert!(LabelledText::parse("news Oslo", None, "t").is_err());
        assert!(LabelledText::parse("\tOslo", None, "t").is_err());
    }
}
