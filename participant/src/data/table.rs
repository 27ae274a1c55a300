//! Reader for CSV tables: a header row names the columns, one column is the target (a class or
//! a real value) and the others, or the ones named, are numeric features. It turns a partner
//! site's spreadsheet export into [`Examples`] and refuses, naming the line, the column and the
//! value, anything it would otherwise have to guess about.

use super::{Examples, Targets};
use crate::Error;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// What a table holds and which columns to use.
#[derive(Debug, Clone, PartialEq)]
pub struct TableOptions {
    /// The target column's name.
    pub target: String,
    /// The feature columns' names, in the order the model sees them; `None` takes every column
    /// but the target, in file order.
    pub features: Option<Vec<String>>,
    /// Whether the target is a class or a real value.
    pub kind: TargetKind,
}

/// How the target column is read.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    /// The target names a class.
    Classification {
        /// The classes, in label order; a value outside them is refused. `None` takes the sorted
        /// distinct values of the target column, which only agrees across sites when every site
        /// holds every class: a federation should give the list.
        classes: Option<Vec<String>>,
    },
    /// The target is a real number.
    Regression,
}

impl TableOptions {
    /// A classification on column `target`, with every other column as a feature and the
    /// classes found in the data.
    pub fn classification(target: impl Into<String>) -> TableOptions {
        TableOptions {
            target: target.into(),
            features: None,
            kind: TargetKind::Classification { classes: None },
        }
    }

    /// A regression on column `target`, with every other column as a feature.
    pub fn regression(target: impl Into<String>) -> TableOptions {
        TableOptions {
            target: target.into(),
            features: None,
            kind: TargetKind::Regression,
        }
    }

    /// Uses exactly these feature columns, in this order.
    pub fn with_features<S: Into<String>>(
        mut self,
        features: impl IntoIterator<Item = S>,
    ) -> TableOptions {
        self.features = Some(features.into_iter().map(Into::into).collect());
        self
    }

    /// Makes the target a classification into exactly these classes, in label order.
    pub fn with_classes<S: Into<String>>(
        mut self,
        classes: impl IntoIterator<Item = S>,
    ) -> TableOptions {
        self.kind = TargetKind::Classification {
            classes: Some(classes.into_iter().map(Into::into).collect()),
        };
        self
    }
}

/// Reads a CSV table with a header row into examples: features `[n_features]` named after their
/// columns, targets as `options` says. Cells are trimmed of surrounding whitespace; feature
/// cells (and a regression's target) must be finite numbers.
pub fn read_csv(path: &Path, options: &TableOptions) -> Result<Examples, Error> {
    let data_error = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        what: format!("opening data file {}", path.display()),
        source,
    })?;
    // Flexible, so that a short or long row reaches our own check, which names the line and
    // both counts in the house's words. Records end at `\n` only: with the default CRLF
    // terminator the reader ends a record at `\r` and counts its `\n` as part of the next
    // one, whose line number then comes out one short; the `\r` left in the last cell goes
    // with the trimming.
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(std::io::BufReader::new(file));

    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e, &[]))?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.is_empty() || header == [""] {
        return Err(data_error(
            "is empty; expected a header row naming the columns".into(),
        ));
    }
    let mut seen = HashMap::new();
    for (index, name) in header.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), index) {
            return Err(data_error(format!(
                "the header names column {name:?} twice (columns {} and {}); column names must be unique",
                first + 1,
                index + 1
            )));
        }
    }
    let column = |name: &str, role: &str| {
        seen.get(name).copied().ok_or_else(|| {
            data_error(format!(
                "has no column {name:?} ({role}); its columns are {header:?}"
            ))
        })
    };

    let target = column(&options.target, "the target")?;
    let features: Vec<usize> = match &options.features {
        Some(names) => {
            let mut indices = Vec::with_capacity(names.len());
            for name in names {
                let index = column(name, "a feature")?;
                if index == target {
                    return Err(data_error(format!(
                        "column {name:?} is named both as the target and as a feature"
                    )));
                }
                if indices.contains(&index) {
                    return Err(data_error(format!(
                        "feature column {name:?} is named twice"
                    )));
                }
                indices.push(index);
            }
            indices
        }
        None => (0..header.len()).filter(|&i| i != target).collect(),
    };
    if features.is_empty() {
        return Err(data_error(format!(
            "has no feature column besides the target {:?}",
            options.target
        )));
    }
    let given_classes = match &options.kind {
        TargetKind::Classification {
            classes: Some(classes),
        } => {
            let mut lookup = HashMap::with_capacity(classes.len());
            for (label, class) in classes.iter().enumerate() {
                if lookup.insert(class.as_str(), label as u32).is_some() {
                    return Err(data_error(format!(
                        "the given classes {classes:?} name {class:?} twice"
                    )));
                }
            }
            Some((lookup, classes))
        }
        _ => None,
    };
    // Only when every column is a feature by default can a stray text column (an id, a date)
    // be the reason for a non-numeric cell; say how to leave it out.
    let hint = if options.features.is_none() {
        "; every column but the target is a feature unless the features are named"
    } else {
        ""
    };

    let mut values = Vec::new();
    let mut class_cells = Vec::new();
    let mut labels = Vec::new();
    let mut numeric_targets = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut n_rows: u64 = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, e, &header)),
        }
        // A blank line (or a CRLF file's bare `\r`): the reader skips empty lines itself, but
        // not one that only trimming makes empty. A real row has at least two cells (a target
        // and a feature), so this is never data.
        if record.len() == 1 && record.get(0) == Some("") {
            continue;
        }
        n_rows += 1;
        // The header is line 1; a quoted cell may span lines, so the reader's count is the
        // truth and ours only a fallback.
        let line = record.position().map_or(n_rows + 1, csv::Position::line);
        if record.len() != header.len() {
            return Err(data_error(format!(
                "line {line} has {} fields, expected {} as in the header",
                record.len(),
                header.len()
            )));
        }
        let cell_error = |index: usize, reason: String| Error::Cell {
            path: path.to_path_buf(),
            line,
            column: header[index].clone(),
            reason,
        };
        for &index in &features {
            let text = record.get(index).unwrap_or_default();
            values.push(number(text, hint).map_err(|reason| cell_error(index, reason))?);
        }
        let text = record.get(target).unwrap_or_default();
        if let TargetKind::Regression = options.kind {
            numeric_targets.push(number(text, "").map_err(|reason| cell_error(target, reason))?);
        } else if text.is_empty() {
            return Err(cell_error(target, "is empty, expected a class".into()));
        } else if let Some((lookup, classes)) = &given_classes {
            let label = lookup.get(text).ok_or_else(|| {
                cell_error(
                    target,
                    format!("unknown class {text:?}; the classes are {classes:?}"),
                )
            })?;
            labels.push(*label);
        } else {
            class_cells.push(text.to_owned());
        }
    }
    if n_rows == 0 {
        return Err(data_error(
            "has a header but no rows; expected one example per row".into(),
        ));
    }

    let targets = match &options.kind {
        TargetKind::Regression => Targets::Values(numeric_targets),
        TargetKind::Classification {
            classes: Some(classes),
        } => Targets::Classes {
            labels,
            classes: classes.clone(),
        },
        TargetKind::Classification { classes: None } => {
            let classes: Vec<String> = class_cells
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let lookup: HashMap<&str, u32> = classes
                .iter()
                .enumerate()
                .map(|(label, class)| (class.as_str(), label as u32))
                .collect();
            let labels = class_cells.iter().map(|c| lookup[c.as_str()]).collect();
            Targets::Classes { labels, classes }
        }
    };
    Ok(Examples {
        feature_shape: vec![features.len()],
        feature_names: features.iter().map(|&i| header[i].clone()).collect(),
        features: values,
        targets,
    })
}

/// Parses a numeric cell, or says what is wrong with it; `hint` follows a non-numeric value's
/// message.
fn number(text: &str, hint: &str) -> Result<f32, String> {
    if text.is_empty() {
        return Err("is empty, expected a number".into());
    }
    match text.parse::<f32>() {
        Ok(value) if value.is_finite() => Ok(value),
        // f32 parsing accepts "NaN" and "inf", and turns what exceeds its range into infinity;
        // none of them can be trained on.
        Ok(_) => Err(format!(
            "{text:?} is not a finite number (NaN, infinite or beyond f32's range)"
        )),
        Err(_) => Err(format!("{text:?} is not a number{hint}")),
    }
}

/// The `csv` crate's error in our terms: I/O stays I/O, a cell that is not UTF-8 names its
/// line and column.
fn csv_error(path: &Path, error: csv::Error, header: &[String]) -> Error {
    let reason = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(source) => Error::Io {
            what: format!("reading data file {}", path.display()),
            source,
        },
        csv::ErrorKind::Utf8 {
            pos: Some(pos),
            err,
        } if err.field() < header.len() => Error::Cell {
            path: path.to_path_buf(),
            line: pos.line(),
            column: header[err.field()].clone(),
            reason: "is not valid UTF-8 text".into(),
        },
        _ => Error::Data {
            path: path.to_path_buf(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn error(text: &str, options: &TableOptions) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", text);
        let err = read_csv(&path, options).unwrap_err().to_string();
        assert!(err.contains("t.csv"), "{err}");
        err
    }

    const TABLE: &str = "a, b ,label,c\n1,2,cat,3\n 4 ,5.5,dog,6\n7,-8e1,cat,9\n";

    #[test]
    fn reads_every_other_column_as_features_and_sorts_found_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", TABLE);
        let examples = read_csv(&path, &TableOptions::classification("label")).unwrap();
        assert_eq!(examples.feature_shape, vec![3]);
        assert_eq!(examples.feature_names, vec!["a", "b", "c"]);
        assert_eq!(
            examples.features,
            vec![1.0, 2.0, 3.0, 4.0, 5.5, 6.0, 7.0, -80.0, 9.0]
        );
        assert_eq!(
            examples.targets,
            Targets::Classes {
                labels: vec![0, 1, 0],
                classes: vec!["cat".into(), "dog".into()],
            }
        );
    }

    #[test]
    fn named_features_and_given_classes_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", TABLE);
        let options = TableOptions::classification("label")
            .with_features(["c", "a"])
            .with_classes(["dog", "cat", "bird"]);
        let examples = read_csv(&path, &options).unwrap();
        assert_eq!(examples.feature_shape, vec![2]);
        assert_eq!(examples.feature_names, vec!["c", "a"]);
        assert_eq!(examples.features, vec![3.0, 1.0, 6.0, 4.0, 9.0, 7.0]);
        assert_eq!(
            examples.targets,
            Targets::Classes {
                labels: vec![1, 0, 1],
                classes: vec!["dog".into(), "cat".into(), "bird".into()],
            }
        );
    }

    #[test]
    fn regression_parses_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", "x,y\n1,0.5\n2,-1.25\n");
        let examples = read_csv(&path, &TableOptions::regression("y")).unwrap();
        assert_eq!(examples.feature_names, vec!["x"]);
        assert_eq!(examples.features, vec![1.0, 2.0]);
        assert_eq!(examples.targets, Targets::Values(vec![0.5, -1.25]));

        let err = error("x,y\n1,0.5\n2,high\n", &TableOptions::regression("y"));
        assert!(
            err.contains("line 3, column \"y\": \"high\" is not a number"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_and_header_without_rows_are_refused() {
        for empty in ["", "\n\n", " \r\n"] {
            let err = error(empty, &TableOptions::regression("y"));
            assert!(err.contains("is empty; expected a header row"), "{err}");
        }
        let err = error("x,y\n", &TableOptions::regression("y"));
        assert!(err.contains("has a header but no rows"), "{err}");
    }

    #[test]
    fn missing_columns_are_named_with_the_header() {
        let err = error(TABLE, &TableOptions::classification("kind"));
        assert!(
            err.contains(
                "has no column \"kind\" (the target); its columns are [\"a\", \"b\", \"label\", \"c\"]"
            ),
            "{err}"
        );
        let options = TableOptions::classification("label").with_features(["a", "d"]);
        let err = error(TABLE, &options);
        assert!(
            err.contains("has no column \"d\" (a feature); its columns are"),
            "{err}"
        );
        let options = TableOptions::classification("label").with_features(["a", "label"]);
        let err = error(TABLE, &options);
        assert!(err.contains("both as the target and as a feature"), "{err}");
    }

    #[test]
    fn bad_feature_cells_name_line_column_and_value() {
        let err = error(
            "a,b,y\n1,2,x\n3,abc,x\n",
            &TableOptions::classification("y"),
        );
        assert!(
            err.contains("t.csv, line 3, column \"b\": \"abc\" is not a number; every column"),
            "{err}"
        );
        let options = TableOptions::classification("y").with_features(["a", "b"]);
        let err = error("a,b,y\n1,2,x\n3,  ,x\n", &options);
        assert!(
            err.contains("line 3, column \"b\": is empty, expected a number"),
            "{err}"
        );
        for bad in ["NaN", "inf", "-infinity", "1e39"] {
            let err = error(&format!("a,b,y\n1,{bad},x\n"), &options);
            assert!(
                err.contains(&format!(
                    "line 2, column \"b\": \"{bad}\" is not a finite number"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_and_empty_classes_are_refused() {
        let options = TableOptions::classification("label").with_classes(["cat", "dog"]);
        let err = error("a,label\n1,cat\n2,cow\n", &options);
        assert!(
            err.contains(
                "line 3, column \"label\": unknown class \"cow\"; the classes are [\"cat\", \"dog\"]"
            ),
            "{err}"
        );
        let err = error(
            "a,label\n1,cat\n2,\n",
            &TableOptions::classification("label"),
        );
        assert!(
            err.contains("line 3, column \"label\": is empty, expected a class"),
            "{err}"
        );
        let options = TableOptions::classification("label").with_classes(["cat", "cat"]);
        let err = error("a,label\n1,cat\n", &options);
        assert!(err.contains("name \"cat\" twice"), "{err}");
    }

    #[test]
    fn rows_with_the_wrong_number_of_fields_are_refused() {
        let options = TableOptions::regression("y");
        let err = error("x,y\n1,2\n3\n", &options);
        assert!(
            err.contains("line 3 has 1 fields, expected 2 as in the header"),
            "{err}"
        );
        let err = error("x,y\n1,2,3\n", &options);
        assert!(
            err.contains("line 2 has 3 fields, expected 2 as in the header"),
            "{err}"
        );
    }

    #[test]
    fn line_numbers_count_quoted_line_breaks() {
        let err = error(
            "x,note,y\n1,\"two\nlines\",2\n3,ok,z\n",
            &TableOptions::regression("y").with_features(["x"]),
        );
        assert!(err.contains("line 4, column \"y\": \"z\""), "{err}");
    }

    #[test]
    fn crlf_files_and_blank_lines_keep_true_line_numbers() {
        let text = "x , y\r\n1,\"a\"\r\n\r\n  \n2,b\r\n3,\"c\" \r\n4,\r\n";
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", &text[..text.len() - 6]);
        let examples = read_csv(&path, &TableOptions::classification("y")).unwrap();
        assert_eq!(examples.feature_names, vec!["x"]);
        assert_eq!(examples.features, vec![1.0, 2.0, 3.0]);
        assert_eq!(
            examples.targets,
            Targets::Classes {
                labels: vec![0, 1, 2],
                classes: vec!["a".into(), "b".into(), "c".into()],
            }
        );
        let err = error(text, &TableOptions::classification("y"));
        assert!(
            err.contains("line 7, column \"y\": is empty, expected a class"),
            "{err}"
        );
    }

    #[test]
    fn a_cell_that_is_not_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, b"x,y\n1,2\n3,\xff\n").unwrap();
        let err = read_csv(&path, &TableOptions::regression("y"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.csv, line 3, column \"y\": is not valid UTF-8 text"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_column_names_are_refused() {
        let err = error("x,y, x\n1,2,3\n", &TableOptions::regression("y"));
        assert!(
            err.contains("names column \"x\" twice (columns 1 and 3)"),
            "{err}"
        );
    }

    #[test]
    fn a_table_with_only_the_target_is_refused() {
        let err = error("y\n1\n", &TableOptions::regression("y"));
        assert!(
            err.contains("no feature column besides the target"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_csv(
            Path::new("/nonexistent/t.csv"),
            &TableOptions::regression("y"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/t.csv"), "{err}");
    }
}
