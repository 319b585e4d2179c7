//! Two sides' rows paired by UUID while both stream past, so memory does not grow with the table.
//!
//! PostgreSQL returns its rows in UUID order (`ORDER BY id` on the primary key). SQLite returns
//! them in the order of its text index on `id`, which is the UUID order whenever the ids are
//! spelled alike (all lower case, or all upper case, with hyphens), but not for a file that
//! mixes spellings. So the SQLite side may come in any order: a SQLite row is settled as soon
//! as PostgreSQL has passed its key, and only PostgreSQL rows that no SQLite row has claimed yet
//! wait (as small digests) until the end. With equal sides spelled alike nothing waits.

use std::collections::HashMap;
use std::hash::Hash;

/// One key's rows, side by side.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pair<T> {
    /// Both sides have the key.
    Both(T, T),
    /// Only SQLite has it.
    SqliteOnly(T),
    /// Only PostgreSQL has it.
    PostgresOnly(T),
}

impl<T> Pair<T> {
    /// The same pair, by reference.
    pub(crate) fn as_ref(&self) -> Pair<&T> {
        match self {
            Pair::Both(a, b) => Pair::Both(a, b),
            Pair::SqliteOnly(a) => Pair::SqliteOnly(a),
            Pair::PostgresOnly(b) => Pair::PostgresOnly(b),
        }
    }

    /// A pair from what each side holds of one key; `None` when neither does.
    pub(crate) fn of(sqlite: Option<T>, postgres: Option<T>) -> Option<Pair<T>> {
        match (sqlite, postgres) {
            (Some(a), Some(b)) => Some(Pair::Both(a, b)),
            (Some(a), None) => Some(Pair::SqliteOnly(a)),
            (None, Some(b)) => Some(Pair::PostgresOnly(b)),
            (None, None) => None,
        }
    }
}

/// Pairs `sqlite` (any order, each key at most once) with `postgres` (strictly
/// increasing keys), calling `each` once per key on either side.
///
/// Errors of either stream, or of `each`, stop the merge and are returned.
pub(crate) fn merge<K, T, E>(
    mut sqlite: impl Iterator<Item = Result<T, E>>,
    mut postgres: impl Iterator<Item = Result<T, E>>,
    key: impl Fn(&T) -> K,
    mut each: impl FnMut(Pair<T>) -> Result<(), E>,
) -> Result<(), E>
where
    K: Ord + Hash + Copy,
{
    // PostgreSQL rows passed over while SQLite's head was further on.
    let mut waiting: HashMap<K, T> = HashMap::new();
    let mut s = sqlite.next().transpose()?;
    let mut p = postgres.next().transpose()?;
    loop {
        let take_sqlite = match (&s, &p) {
            (None, None) => break,
            (Some(a), Some(b)) if key(a) == key(b) => {
                if let (Some(a), Some(b)) = (s.take(), p.take()) {
                    each(Pair::Both(a, b))?;
                }
                s = sqlite.next().transpose()?;
                p = postgres.next().transpose()?;
                continue;
            }
            (Some(a), Some(b)) => key(a) < key(b),
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_sqlite {
            if let Some(a) = s.take() {
                // PostgreSQL is past this key: its row, if any, is waiting.
                match waiting.remove(&key(&a)) {
                    Some(b) => each(Pair::Both(a, b))?,
                    None => each(Pair::SqliteOnly(a))?,
                }
            }
            s = sqlite.next().transpose()?;
        } else {
            if let Some(b) = p.take() {
                waiting.insert(key(&b), b);
            }
            p = postgres.next().transpose()?;
        }
    }
    let mut rest: Vec<(K, T)> = waiting.into_iter().collect();
    rest.sort_unstable_by_key(|(k, _)| *k);
    for (_, b) in rest {
        each(Pair::PostgresOnly(b))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sqlite: &[u32], postgres: &[u32]) -> Vec<Pair<u32>> {
        let mut out = Vec::new();
        merge::<_, _, ()>(
            sqlite.iter().copied().map(Ok),
            postgres.iter().copied().map(Ok),
            |v| *v,
            |pair| {
                out.push(pair);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn pairs_equal_sides_in_order() {
        let out = run(&[1, 2, 3], &[1, 2, 3]);
        assert_eq!(
            out,
            vec![Pair::Both(1, 1), Pair::Both(2, 2), Pair::Both(3, 3)]
        );
    }

    #[test]
    fn rows_on_one_side_at_the_start_middle_and_end() {
        let out = run(&[1, 3, 4, 6, 9], &[2, 3, 5, 6, 7, 8]);
        assert_eq!(
            out,
            vec![
                Pair::SqliteOnly(1),
                Pair::Both(3, 3),
                Pair::SqliteOnly(4),
                Pair::Both(6, 6),
                Pair::SqliteOnly(9),
                Pair::PostgresOnly(2),
                Pair::PostgresOnly(5),
                Pair::PostgresOnly(7),
                Pair::PostgresOnly(8),
            ]
        );
    }

    #[test]
    fn sqlite_out_of_order_still_pairs() {
        // A file mixing id spellings: its text order is not the UUID order.
        let out = run(&[5, 1, 7, 3, 2], &[1, 2, 3, 5, 7]);
        let mut both: Vec<u32> = out
            .iter()
            .map(|p| match p {
                Pair::Both(a, b) if a == b => *a,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        both.sort();
        assert_eq!(both, vec![1, 2, 3, 5, 7]);
    }

    #[test]
    fn one_side_empty() {
        assert_eq!(
            run(&[], &[1, 2]),
            vec![Pair::PostgresOnly(1), Pair::PostgresOnly(2)]
        );
        assert_eq!(
            run(&[2, 1], &[]),
            vec![Pair::SqliteOnly(2), Pair::SqliteOnly(1)]
        );
        assert_eq!(run(&[], &[]), vec![]);
    }

    #[test]
    fn errors_stop_the_merge() {
        let r = merge(
            vec![Ok(1), Err("boom")].into_iter(),
            vec![Ok(1), Ok(2)].into_iter(),
            |v: &u32| *v,
            |_| Ok(()),
        );
        assert_eq!(r, Err("boom"));
    }
}
