//! `ItemBatcher`: turns files and their row groups into child executions. Pure.
//!
//! With an Athena manifest of Parquet files an item is one reading (one row). A child
//! execution covers a range of whole row groups of one file — a worker never splits a row
//! group, since that would make two workers decode the same pages — and stays within
//! `MaxItemsPerBatch` rows and `MaxInputBytesPerBatch` compressed bytes, except that a single
//! row group larger than the limits still forms a batch of its own.

use serde::{Deserialize, Serialize};

use crate::run::ChildSpec;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ItemBatcher {
    #[serde(default)]
    pub max_items_per_batch: Option<u64>,
    #[serde(default)]
    pub max_input_bytes_per_batch: Option<u64>,
}

impl ItemBatcher {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_items_per_batch == Some(0) {
            return Err("ItemBatcher MaxItemsPerBatch must be at least 1".into());
        }
        if self.max_input_bytes_per_batch == Some(0) {
            return Err("ItemBatcher MaxInputBytesPerBatch must be at least 1".into());
        }
        if self.max_items_per_batch.is_none() && self.max_input_bytes_per_batch.is_none() {
            return Err(
                "ItemBatcher needs MaxItemsPerBatch or MaxInputBytesPerBatch (or leave it out)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the item reader learnt about one object from its footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    pub bucket: String,
    pub key: String,
    /// `(rows, compressed bytes)` per row group; `None` when the footer could not be read
    /// (the child execution then covers the whole object and its worker reports why).
    pub row_groups: Option<Vec<(u64, u64)>>,
}

/// Plans the child executions of a run, in manifest order, with each child's map context
/// `Index` (the run-wide index of its first reading).
pub fn plan(files: &[FileLayout], batcher: Option<&ItemBatcher>) -> Vec<ChildSpec> {
    let mut planner = Planner::new(batcher.copied());
    let mut children = Vec::new();
    for f in files {
        planner.add(f, &mut children);
    }
    children
}

/// [`plan`] one file at a time, so the item reader can hand a run its first child
/// executions while it is still reading the footers of the rest: a file's children depend
/// only on its own layout and the readings of the files before it.
#[derive(Debug, Clone)]
pub struct Planner {
    batcher: Option<ItemBatcher>,
    /// Map context `Index` of the next file's first reading.
    index: u64,
}

impl Planner {
    pub fn new(batcher: Option<ItemBatcher>) -> Self {
        Planner { batcher, index: 0 }
    }

    /// Appends the child executions of the next file in manifest order to `out`.
    pub fn add(&mut self, f: &FileLayout, out: &mut Vec<ChildSpec>) {
        let child = |row_groups, first_index, items| ChildSpec {
            bucket: f.bucket.clone(),
            key: f.key.clone(),
            row_groups,
            first_index,
            items,
        };
        let Some(groups) = &f.row_groups else {
            out.push(child(None, self.index, None));
            return;
        };
        let Some(b) = &self.batcher else {
            let rows: u64 = groups.iter().map(|(r, _)| r).sum();
            out.push(child(None, self.index, Some(rows)));
            self.index += rows;
            return;
        };
        let max_rows = b.max_items_per_batch.unwrap_or(u64::MAX);
        let max_bytes = b.max_input_bytes_per_batch.unwrap_or(u64::MAX);
        let mut start = 0usize;
        while start < groups.len() {
            let (mut rows, mut bytes) = groups[start];
            let mut end = start + 1;
            while end < groups.len() {
                let (r, by) = groups[end];
                if rows + r > max_rows || bytes.saturating_add(by) > max_bytes {
                    break;
                }
                rows += r;
                bytes = bytes.saturating_add(by);
                end += 1;
            }
            out.push(child(
                Some((start as u32, end as u32)),
                self.index,
                Some(rows),
            ));
            self.index += rows;
            start = end;
        }
        // A file with no row groups still gets a child, so it shows up in the results.
        if groups.is_empty() {
            out.push(child(Some((0, 0)), self.index, Some(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, groups: &[(u64, u64)]) -> FileLayout {
        FileLayout {
            bucket: "data".into(),
            key: key.into(),
            row_groups: Some(groups.to_vec()),
        }
    }

    type Planned = (Option<(u32, u32)>, u64, Option<u64>);

    fn ranges(c: &[ChildSpec]) -> Vec<Planned> {
        c.iter()
            .map(|c| (c.row_groups, c.first_index, c.items))
            .collect()
    }

    #[test]
    fn ten_row_groups_of_200k_with_250k_items_per_batch_give_ten_children() {
        let f = file("big", &[(200_000, 8_000_000); 10]);
        let b = ItemBatcher {
            max_items_per_batch: Some(250_000),
            max_input_bytes_per_batch: None,
        };
        let c = plan(&[f], Some(&b));
        assert_eq!(c.len(), 10);
        for (i, child) in c.iter().enumerate() {
            assert_eq!(child.row_groups, Some((i as u32, i as u32 + 1)));
            assert_eq!(child.first_index, i as u64 * 200_000);
            assert_eq!(child.items, Some(200_000));
        }
    }

    #[test]
    fn row_groups_are_packed_up_to_both_limits() {
        let f = file(
            "f",
            &[(100, 10), (100, 10), (100, 10), (100, 50), (100, 20)],
        );
        let b = ItemBatcher {
            max_items_per_batch: Some(300),
            max_input_bytes_per_batch: Some(60),
        };
        assert_eq!(
            ranges(&plan(&[f], Some(&b))),
            [
                (Some((0, 3)), 0, Some(300)),
                (Some((3, 4)), 300, Some(100)),
                (Some((4, 5)), 400, Some(100))
            ]
        );
    }

    #[test]
    fn oversized_row_group_is_a_batch_of_its_own() {
        let f = file("f", &[(10, 1), (1_000, 1), (10, 1)]);
        let b = ItemBatcher {
            max_items_per_batch: Some(50),
            max_input_bytes_per_batch: None,
        };
        assert_eq!(
            ranges(&plan(&[f], Some(&b))),
            [
                (Some((0, 1)), 0, Some(10)),
                (Some((1, 2)), 10, Some(1_000)),
                (Some((2, 3)), 1_010, Some(10))
            ]
        );
    }

    #[test]
    fn index_runs_across_files_and_unreadable_footers_get_whole_file_children() {
        let files = [
            file("a", &[(24, 1)]),
            FileLayout {
                bucket: "data".into(),
                key: "missing".into(),
                row_groups: None,
            },
            file("b", &[(24, 1), (24, 1)]),
            file("empty", &[]),
        ];
        assert_eq!(
            ranges(&plan(&files, None)),
            [
                (None, 0, Some(24)),
                (None, 24, None),
                (None, 24, Some(48)),
                (None, 72, Some(0))
            ]
        );
        let b = ItemBatcher {
            max_items_per_batch: Some(24),
            max_input_bytes_per_batch: None,
        };
        assert_eq!(
            ranges(&plan(&files, Some(&b))),
            [
                (Some((0, 1)), 0, Some(24)),
                (None, 24, None),
                (Some((0, 1)), 24, Some(24)),
                (Some((1, 2)), 48, Some(24)),
                (Some((0, 0)), 72, Some(0))
            ]
        );
    }

    #[test]
    fn planning_file_by_file_gives_the_same_children_as_planning_all_at_once() {
        let files = [
            file("a", &[(24, 1), (10, 5)]),
            FileLayout {
                bucket: "data".into(),
                key: "missing".into(),
                row_groups: None,
            },
            file("b", &[(7, 1)]),
            file("empty", &[]),
        ];
        let b = ItemBatcher {
            max_items_per_batch: Some(20),
            max_input_bytes_per_batch: None,
        };
        for batcher in [None, Some(b)] {
            let mut planner = Planner::new(batcher);
            let mut one_by_one = Vec::new();
            for f in &files {
                planner.add(f, &mut one_by_one);
            }
            assert_eq!(one_by_one, plan(&files, batcher.as_ref()));
        }
    }

    #[test]
    fn empty_or_zero_limits_are_refused() {
        assert!(ItemBatcher::default().validate().is_err());
        assert!(
            ItemBatcher {
                max_items_per_batch: Some(0),
                max_input_bytes_per_batch: None
            }
            .validate()
            .is_err()
        );
    }
}
