//! `report --directory FILE`: callers labelled with the newest directory. Records keep the
//! names known when they were written (token claims; the directory the collector had); a
//! report given a directory snapshot names each caller as that directory does now: a person
//! (user, guest) by the UPN (else display name) of its object id, a service principal or
//! managed identity by the display name of its application id. Callers the directory does not
//! know keep the label from the records. Done after the queries ran, on the result rows, so
//! the SQL shown stays what the stores answer; the report says which directory it used.

use super::result::{Key, Table};
use super::spec::{GroupExpr, Section, APP_KINDS, PERSON_KINDS};
use crate::join::identity::directory::{Directory, User};

/// Positions of (identity_kind, caller, caller_id) in a section's group columns.
fn positions(s: &Section) -> Option<(usize, usize, usize)> {
    let pos = |n: &str| s.group_by.iter().position(|g| g.name == n);
    let label = pos("caller")?;
    let GroupExpr::Latest { key, .. } = &s.group_by[label].expr else {
        return None;
    };
    Some((pos("identity_kind")?, label, pos(key)?))
}

/// Relabels every section's caller rows; returns how many rows got another name.
pub fn relabel(sections: &[Section], tables: &mut [Table], dir: &Directory) -> u64 {
    let mut changed = 0;
    for (s, t) in sections.iter().zip(tables.iter_mut()) {
        let Some((kind, label, id)) = positions(s) else {
            continue;
        };
        for row in &mut t.rows {
            let (Key::Text(k), Key::Text(caller)) = (&row.keys[kind], &row.keys[id]) else {
                continue;
            };
            let name = if PERSON_KINDS.contains(&k.as_str()) {
                dir.user(caller).and_then(User::label)
            } else if APP_KINDS.contains(&k.as_str()) {
                dir.app_name(caller)
            } else {
                None
            };
            if let Some(n) = name {
                if !matches!(&row.keys[label], Key::Text(old) if old == n) {
                    row.keys[label] = Key::Text(n.to_owned());
                    changed += 1;
                }
            }
        }
        // Labels are part of the row order.
        *t = Table::new(std::mem::take(&mut t.rows));
    }
    changed
}
