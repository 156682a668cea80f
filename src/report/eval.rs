//! Evaluates [`Section`]s in Rust over Arrow batches read from Parquet: the same meaning as the
//! SQL of [`super::sql`], including SQL's three-valued logic (a comparison with NULL is unknown;
//! a filter keeps a record only when its condition is true; NULL group values form one group).
//!
//! All sections are evaluated in one pass over the data. The caller removes duplicate records
//! (same `record_id`) before calling [`Evaluator::push`]; see `parquet_source.rs`.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ListArray, RecordBatch, StringArray};

use super::result::{Key, Row, Table};
use super::spec::{GroupExpr, MeasureKind, Param, Pred, Section};
use super::ReportError;

/// The values of the list parameters (privileged roles and groups).
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub privileged_roles: Vec<String>,
    pub privileged_groups: Vec<String>,
}

impl ListParams {
    pub fn get(&self, p: Param) -> &[String] {
        match p {
            Param::PrivilegedRoles => &self.privileged_roles,
            Param::PrivilegedGroups => &self.privileged_groups,
            Param::From | Param::To => &[],
        }
    }
}

/// A predicate with columns resolved to slots.
enum CPred {
    Eq(usize, &'static str),
    In(usize, Vec<&'static str>),
    NotNull(usize),
    Overlaps(usize, HashSet<String>),
    And(Vec<CPred>),
    Or(Vec<CPred>),
    Not(Box<CPred>),
}

enum CGroup {
    Col(usize),
    Coalesce(Vec<usize>),
    Case(Vec<(CPred, Vec<usize>)>),
    Intersect(usize, HashSet<String>),
    /// Filled in by [`CSection::finish`] from tracker `.0`, looked up by the group value at
    /// position `.1`; NULL while grouping (it depends on the key alone).
    Latest(usize, usize),
    /// Accumulated per group into attribute slot `.1`; NULL while grouping.
    Values(Box<CGroup>, usize),
}

/// [`GroupExpr::Latest`]: the newest label per key over every record of the range.
struct CLatest {
    name: &'static str,
    key: CGroup,
    label: CGroup,
    /// key → (start_time, label) of the newest labelled record.
    newest: HashMap<String, (i64, String)>,
}

impl CLatest {
    fn push(&mut self, cols: &Cols<'_>, row: usize, start: i64) {
        let (Some(k), Some(l)) = (self.key.text(cols, row), self.label.text(cols, row)) else {
            return;
        };
        match self.newest.get_mut(k) {
            // Greatest start_time, then greatest label in byte order: as the SQL's ORDER BY.
            Some(e) => {
                if (start, l) > (e.0, e.1.as_str()) {
                    *e = (start, l.to_owned());
                }
            }
            None => {
                self.newest.insert(k.to_owned(), (start, l.to_owned()));
            }
        }
    }
}

enum CMeasure {
    Records(Option<CPred>),
    Distinct(usize, Option<CPred>),
}

enum Acc {
    Count(u64),
    Distinct(HashSet<String>),
}

/// What a group accumulates: one accumulator per measure, one value set per
/// [`CGroup::Values`] attribute.
struct GroupAcc {
    measures: Vec<Acc>,
    values: Vec<BTreeSet<String>>,
}

struct CSection {
    filter: Option<CPred>,
    group: Vec<CGroup>,
    measures: Vec<CMeasure>,
    groups: HashMap<Vec<Key>, GroupAcc>,
    /// How many [`CGroup::Values`] attributes each group has.
    values: usize,
    baseline: Option<CBaseline>,
}

struct CBaseline {
    keys: Vec<usize>,
    /// Positions of the keys among the group-by values.
    positions: Vec<usize>,
    pred: CPred,
    min_percent: u32,
    /// Per key: (records satisfying pred, all records).
    tally: HashMap<Vec<Key>, (u64, u64)>,
}

/// One column of a batch, by slot.
#[derive(Clone, Copy)]
enum ColRef<'a> {
    Text(&'a StringArray),
    List(&'a ListArray, &'a StringArray),
}

struct Cols<'a>(Vec<ColRef<'a>>);

impl<'a> Cols<'a> {
    fn text(&self, slot: usize, row: usize) -> Option<&'a str> {
        match self.0[slot] {
            ColRef::Text(a) => a.is_valid(row).then(|| a.value(row)),
            ColRef::List(..) => None,
        }
    }

    /// The elements of a list cell (NULL elements skipped: the contract's lists here have
    /// none), or `None` for a NULL list.
    fn list(&self, slot: usize, row: usize) -> Option<impl Iterator<Item = &'a str> + 'a> {
        match self.0[slot] {
            ColRef::List(l, values) if l.is_valid(row) => {
                let offsets = l.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                Some(
                    (start..end)
                        .filter(move |&i| values.is_valid(i))
                        .map(move |i| values.value(i)),
                )
            }
            _ => None,
        }
    }
}

/// Evaluates every section over the records pushed to it.
pub struct Evaluator {
    /// Column name per slot, and whether it is a list.
    slots: Vec<(&'static str, bool)>,
    sections: Vec<CSection>,
    /// Shared by every section that names the same latest-label column.
    latest: Vec<CLatest>,
}

impl Evaluator {
    pub fn new(sections: &[Section], params: &ListParams) -> Evaluator {
        let mut b = Builder {
            slots: Vec::new(),
            params,
            latest: Vec::new(),
        };
        let sections = sections
            .iter()
            .map(|s| {
                let mut values = 0;
                let group = s
                    .group_by
                    .iter()
                    .map(|g| match &g.expr {
                        GroupExpr::Latest { key, label } => {
                            let pos = s.group_by.iter().position(|k| k.name == *key);
                            let key = s.group(key).map(|k| &k.expr);
                            match (pos, key) {
                                (Some(pos), Some(key)) => {
                                    CGroup::Latest(b.latest(g.name, key, label), pos)
                                }
                                // spec.rs's test holds every Latest to an existing key.
                                _ => CGroup::Coalesce(Vec::new()),
                            }
                        }
                        GroupExpr::Values(e) => {
                            values += 1;
                            CGroup::Values(Box::new(b.group(e)), values - 1)
                        }
                        e => b.group(e),
                    })
                    .collect();
                (s, group, values)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(s, group, values)| CSection {
                filter: s.filter.as_ref().map(|p| b.pred(p)),
                group,
                values,
                measures: s
                    .measures
                    .iter()
                    .map(|m| {
                        let f = m.filter.as_ref().map(|p| b.pred(p));
                        match m.kind {
                            MeasureKind::Records => CMeasure::Records(f),
                            MeasureKind::DistinctValues(c) => {
                                CMeasure::Distinct(b.slot(c, false), f)
                            }
                        }
                    })
                    .collect(),
                groups: HashMap::new(),
                baseline: s.baseline.as_ref().map(|bl| CBaseline {
                    keys: bl.keys.iter().map(|k| b.slot(k, false)).collect(),
                    positions: s.baseline_positions().unwrap_or_default(),
                    pred: b.pred(&bl.pred),
                    min_percent: bl.min_percent,
                    tally: HashMap::new(),
                }),
            })
            .collect();
        Evaluator {
            slots: b.slots,
            sections,
            latest: b.latest,
        }
    }

    /// The columns to read from Parquet (besides `record_id` and `start_time`).
    pub fn columns(&self) -> Vec<&'static str> {
        self.slots.iter().map(|(n, _)| *n).collect()
    }

    /// Adds the rows of `batch` for which `keep[row]` is true (in the time range, first
    /// occurrence of their record_id).
    pub fn push(&mut self, batch: &RecordBatch, keep: &[bool]) -> Result<(), ReportError> {
        let mut cols = Vec::with_capacity(self.slots.len());
        for (name, is_list) in &self.slots {
            let a = batch
                .column_by_name(name)
                .ok_or_else(|| ReportError::Parquet(format!("column {name} is missing")))?;
            let col = if *is_list {
                let l = a.as_list_opt::<i32>().ok_or_else(|| wrong_type(name))?;
                let values = l
                    .values()
                    .as_string_opt::<i32>()
                    .ok_or_else(|| wrong_type(name))?;
                ColRef::List(l, values)
            } else {
                ColRef::Text(a.as_string_opt::<i32>().ok_or_else(|| wrong_type(name))?)
            };
            cols.push(col);
        }
        let cols = Cols(cols);
        let starts = if self.latest.is_empty() {
            None
        } else {
            Some(
                batch
                    .column_by_name("start_time")
                    .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>())
                    .ok_or_else(|| wrong_type("start_time"))?,
            )
        };
        for (row, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            if let Some(starts) = starts {
                if starts.is_valid(row) {
                    let t = starts.value(row);
                    for l in &mut self.latest {
                        l.push(&cols, row, t);
                    }
                }
            }
            for s in &mut self.sections {
                s.push(&cols, row);
            }
        }
        Ok(())
    }

    /// The result of each section, in the order given to [`Evaluator::new`].
    pub fn finish(self) -> Vec<Table> {
        let latest = self.latest;
        self.sections
            .into_iter()
            .map(|s| s.finish(&latest))
            .collect()
    }
}

fn wrong_type(name: &str) -> ReportError {
    ReportError::Parquet(format!(
        "column {name} has an unexpected type (written by an incompatible version?)"
    ))
}

struct Builder<'p> {
    slots: Vec<(&'static str, bool)>,
    params: &'p ListParams,
    latest: Vec<CLatest>,
}

impl Builder<'_> {
    fn slot(&mut self, name: &'static str, list: bool) -> usize {
        match self.slots.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                self.slots.push((name, list));
                self.slots.len() - 1
            }
        }
    }

    /// The tracker of the latest-label column `name` (one per name: spec.rs's test holds every
    /// use of a name to one definition).
    fn latest(&mut self, name: &'static str, key: &GroupExpr, label: &GroupExpr) -> usize {
        if let Some(i) = self.latest.iter().position(|l| l.name == name) {
            return i;
        }
        let l = CLatest {
            name,
            key: self.group(key),
            label: self.group(label),
            newest: HashMap::new(),
        };
        self.latest.push(l);
        self.latest.len() - 1
    }

    fn set(&self, p: Param) -> HashSet<String> {
        self.params.get(p).iter().cloned().collect()
    }

    fn pred(&mut self, p: &Pred) -> CPred {
        match p {
            Pred::Eq(c, v) => CPred::Eq(self.slot(c, false), v),
            Pred::In(c, vs) => CPred::In(self.slot(c, false), vs.clone()),
            Pred::NotNull(c) => CPred::NotNull(self.slot(c, false)),
            Pred::Overlaps(c, p) => CPred::Overlaps(self.slot(c, true), self.set(*p)),
            Pred::And(ps) => CPred::And(ps.iter().map(|p| self.pred(p)).collect()),
            Pred::Or(ps) => CPred::Or(ps.iter().map(|p| self.pred(p)).collect()),
            Pred::Not(p) => CPred::Not(Box::new(self.pred(p))),
        }
    }

    fn group(&mut self, g: &GroupExpr) -> CGroup {
        match g {
            GroupExpr::Col(c) => CGroup::Col(self.slot(c, false)),
            GroupExpr::Coalesce(cs) => {
                CGroup::Coalesce(cs.iter().map(|c| self.slot(c, false)).collect())
            }
            GroupExpr::Intersect(c, p) => CGroup::Intersect(self.slot(c, true), self.set(*p)),
            GroupExpr::Case(arms) => CGroup::Case(
                arms.iter()
                    .map(|(p, cs)| {
                        (
                            self.pred(p),
                            cs.iter().map(|c| self.slot(c, false)).collect(),
                        )
                    })
                    .collect(),
            ),
            // Only valid as a section's group column (handled in `Evaluator::new`).
            GroupExpr::Latest { .. } | GroupExpr::Values(_) => CGroup::Coalesce(Vec::new()),
        }
    }
}

impl CPred {
    /// SQL three-valued logic: `None` is unknown.
    fn eval(&self, cols: &Cols<'_>, row: usize) -> Option<bool> {
        match self {
            CPred::Eq(s, v) => cols.text(*s, row).map(|x| x == *v),
            CPred::In(s, vs) => cols.text(*s, row).map(|x| vs.contains(&x)),
            CPred::NotNull(s) => Some(cols.text(*s, row).is_some()),
            CPred::Overlaps(s, set) => cols.list(*s, row).map(|mut it| it.any(|e| set.contains(e))),
            CPred::And(ps) => {
                let mut unknown = false;
                for p in ps {
                    match p.eval(cols, row) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                (!unknown).then_some(true)
            }
            CPred::Or(ps) => {
                let mut unknown = false;
                for p in ps {
                    match p.eval(cols, row) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                (!unknown).then_some(false)
            }
            CPred::Not(p) => p.eval(cols, row).map(|b| !b),
        }
    }

    fn holds(&self, cols: &Cols<'_>, row: usize) -> bool {
        self.eval(cols, row) == Some(true)
    }
}

impl CGroup {
    /// A per-record text value (Col, Coalesce, Case); `None` is NULL.
    fn text<'a>(&self, cols: &Cols<'a>, row: usize) -> Option<&'a str> {
        match self {
            CGroup::Col(s) => cols.text(*s, row),
            CGroup::Coalesce(ss) => ss.iter().find_map(|s| cols.text(*s, row)),
            CGroup::Case(arms) => arms
                .iter()
                .find(|(p, _)| p.holds(cols, row))
                .and_then(|(_, ss)| ss.iter().find_map(|s| cols.text(*s, row))),
            CGroup::Intersect(..) | CGroup::Latest(..) | CGroup::Values(..) => None,
        }
    }

    fn key(&self, cols: &Cols<'_>, row: usize) -> Key {
        match self {
            CGroup::Col(_) | CGroup::Coalesce(_) | CGroup::Case(_) => {
                Key::from_text(self.text(cols, row))
            }
            CGroup::Latest(..) | CGroup::Values(..) => Key::Null,
            CGroup::Intersect(s, set) => {
                let mut v: Vec<String> = cols
                    .list(*s, row)
                    .into_iter()
                    .flatten()
                    .filter(|e| set.contains(*e))
                    .map(str::to_owned)
                    .collect();
                v.sort_unstable();
                v.dedup();
                Key::List(v)
            }
        }
    }
}

impl CSection {
    fn push(&mut self, cols: &Cols<'_>, row: usize) {
        if let Some(b) = &mut self.baseline {
            let key: Vec<Key> = b
                .keys
                .iter()
                .map(|s| Key::from_text(cols.text(*s, row)))
                .collect();
            let hit = b.pred.holds(cols, row);
            let t = b.tally.entry(key).or_insert((0, 0));
            t.0 += u64::from(hit);
            t.1 += 1;
        }
        if let Some(f) = &self.filter {
            if !f.holds(cols, row) {
                return;
            }
        }
        let key: Vec<Key> = self.group.iter().map(|g| g.key(cols, row)).collect();
        let GroupAcc {
            measures: accs,
            values,
        } = self.groups.entry(key).or_insert_with(|| {
            let accs = self
                .measures
                .iter()
                .map(|m| match m {
                    CMeasure::Records(_) => Acc::Count(0),
                    CMeasure::Distinct(..) => Acc::Distinct(HashSet::new()),
                })
                .collect();
            GroupAcc {
                measures: accs,
                values: vec![BTreeSet::new(); self.values],
            }
        });
        for g in &self.group {
            if let CGroup::Values(e, slot) = g {
                if let Some(v) = e.text(cols, row) {
                    if !values[*slot].contains(v) {
                        values[*slot].insert(v.to_owned());
                    }
                }
            }
        }
        for (m, acc) in self.measures.iter().zip(accs.iter_mut()) {
            let (filter, distinct) = match m {
                CMeasure::Records(f) => (f, None),
                CMeasure::Distinct(s, f) => (f, Some(*s)),
            };
            if !filter.as_ref().is_none_or(|f| f.holds(cols, row)) {
                continue;
            }
            match (acc, distinct) {
                (Acc::Count(n), None) => *n += 1,
                (Acc::Distinct(set), Some(s)) => {
                    if let Some(v) = cols.text(s, row) {
                        if !set.contains(v) {
                            set.insert(v.to_owned());
                        }
                    }
                }
                // Accumulators are built from the same measures, in the same order.
                _ => {}
            }
        }
    }

    fn finish(self, latest: &[CLatest]) -> Table {
        let baseline = self.baseline;
        let group = self.group;
        let rows = self
            .groups
            .into_iter()
            .filter(|(keys, _)| {
                let Some(b) = &baseline else { return true };
                let k: Vec<Key> = b.positions.iter().map(|&i| keys[i].clone()).collect();
                b.tally.get(&k).is_some_and(|(hit, all)| {
                    100 * u128::from(*hit) > u128::from(b.min_percent) * u128::from(*all)
                })
            })
            .map(
                |(
                    mut keys,
                    GroupAcc {
                        measures: accs,
                        values,
                    },
                )| {
                    for (i, g) in group.iter().enumerate() {
                        match g {
                            CGroup::Latest(t, pos) => {
                                keys[i] = match &keys[*pos] {
                                    Key::Text(k) => Key::from_text(
                                        latest[*t].newest.get(k).map(|(_, l)| l.as_str()),
                                    ),
                                    _ => Key::Null,
                                };
                            }
                            CGroup::Values(_, slot) => {
                                keys[i] = Key::List(values[*slot].iter().cloned().collect());
                            }
                            _ => {}
                        }
                    }
                    (keys, accs)
                },
            )
            .map(|(keys, accs)| Row {
                keys,
                measures: accs
                    .into_iter()
                    .map(|a| match a {
                        Acc::Count(n) => n,
                        Acc::Distinct(s) => s.len() as u64,
                    })
                    .collect(),
            })
            .collect();
        Table::new(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{Baseline, GroupBy, Measure};
    use super::*;
    use crate::record::{arrow::to_record_batch, string_list, AuditRecord};

    fn rec(kind: &str, status: &str, dest: Option<&str>, roles: Option<&[&str]>) -> AuditRecord {
        AuditRecord {
            record_id: bytes::Bytes::from(format!("{kind}{status}{dest:?}{roles:?}")),
            identity_kind: crate::record::text::copy(kind),
            token_status: crate::record::text::copy(status),
            destination_service: dest.map(crate::record::text::copy),
            roles: roles.map(|r| string_list(r.iter().copied())),
            ..Default::default()
        }
    }

    fn run(section: Section, params: &ListParams, records: &[AuditRecord]) -> Vec<Row> {
        let batch = to_record_batch(records).expect("batch");
        let mut e = Evaluator::new(std::slice::from_ref(&section), params);
        e.push(&batch, &vec![true; records.len()]).expect("push");
        e.finish().remove(0).rows
    }

    fn section(filter: Option<Pred>, group_by: Vec<GroupBy>, measures: Vec<Measure>) -> Section {
        Section {
            id: "t",
            title: "t",
            criteria: &["CC6.1"],
            description: "",
            filter,
            group_by,
            measures,
            baseline: None,
            chart: &[],
        }
    }

    fn count(name: &'static str, filter: Option<Pred>) -> Measure {
        Measure {
            name,
            kind: MeasureKind::Records,
            filter,
        }
    }

    fn by(name: &'static str, expr: GroupExpr) -> GroupBy {
        GroupBy { name, expr }
    }

    /// Certificate-backed workloads and peer-metadata-only ones are counted apart, and a row
    /// written before `peer_metadata` existed (`mtls` without a source_principal) is read as
    /// peer metadata. The four trust categories still partition the requests.
    #[test]
    fn workloads_by_certificate_and_by_peer_metadata_are_apart_old_rows_included() {
        use super::super::spec::{mtls_workload, peer_metadata_workload, unverified, verified};
        let workload = |id: &str, source: &str, principal: Option<&str>| AuditRecord {
            record_id: crate::record::text::copy(id),
            identity_kind: "workload".into(),
            identity_source: crate::record::text::copy(source),
            token_status: "absent".into(),
            source_principal: principal.map(crate::record::text::copy),
            source_workload: Some("checkout".into()),
            ..Default::default()
        };
        let records = [
            workload(
                "cert",
                "mtls",
                Some("spiffe://cluster.local/ns/orders/sa/checkout"),
            ),
            workload("meta", "peer_metadata", None),
            workload("old", "mtls", None),
            rec("user", "verified", None, None),
            rec("anonymous", "absent", None, None),
        ];
        let s = section(
            None,
            vec![],
            vec![
                count("requests", None),
                count("verified", Some(verified())),
                count("mtls_workload", Some(mtls_workload())),
                count("peer_metadata_workload", Some(peer_metadata_workload())),
                count("unverified", Some(unverified())),
            ],
        );
        assert_eq!(
            run(s, &ListParams::default(), &records)[0].measures,
            [5, 1, 1, 2, 1]
        );
    }

    #[test]
    fn null_comparisons_are_unknown_and_not_counted() {
        let records = [
            rec("user", "verified", Some("a"), None),
            rec("user", "verified", None, None),
        ];
        // NOT (destination_service = 'a') is unknown for the NULL row: SQL drops it.
        let s = section(
            Some(Pred::Not(Box::new(Pred::Eq("destination_service", "a")))),
            vec![],
            vec![count("requests", None)],
        );
        assert!(run(s, &ListParams::default(), &records).is_empty());
        // An OR with a true branch is true even when the other is unknown.
        let s = section(
            Some(Pred::Or(vec![
                Pred::Eq("destination_service", "a"),
                Pred::Eq("identity_kind", "user"),
            ])),
            vec![],
            vec![count("requests", None)],
        );
        assert_eq!(run(s, &ListParams::default(), &records)[0].measures, [2]);
        // NULL forms its own group; groups are ordered by count, then value.
        let s = section(
            None,
            vec![by(
                "destination_service",
                GroupExpr::Col("destination_service"),
            )],
            vec![count("requests", None)],
        );
        let rows = run(s, &ListParams::default(), &records);
        assert_eq!(rows[0].keys, [Key::Null]);
        assert_eq!(rows[1].keys, [Key::Text("a".into())]);
    }

    #[test]
    fn overlap_and_intersection_follow_the_list_parameter() {
        let records = [
            rec(
                "user",
                "verified",
                None,
                Some(&["Admin", "Reader", "Admin"]),
            ),
            rec("user", "bad_signature", None, Some(&["Reader"])),
            rec("user", "verified", None, None),
            rec(
                "service_principal",
                "verified",
                None,
                Some(&["Owner", "Admin"]),
            ),
        ];
        let params = ListParams {
            privileged_roles: vec!["Owner".into(), "Admin".into()],
            privileged_groups: vec![],
        };
        let s = section(
            Some(Pred::Or(vec![
                Pred::Overlaps("roles", Param::PrivilegedRoles),
                Pred::Overlaps("groups", Param::PrivilegedGroups),
            ])),
            vec![by(
                "r",
                GroupExpr::Intersect("roles", Param::PrivilegedRoles),
            )],
            vec![count("requests", None)],
        );
        let rows = run(s, &params, &records);
        let keys: Vec<&Key> = rows.iter().map(|r| &r.keys[0]).collect();
        assert_eq!(
            keys,
            [
                &Key::List(vec!["Admin".into()]),
                &Key::List(vec!["Admin".into(), "Owner".into()])
            ]
        );
        // Nothing is privileged when nothing is configured.
        let s = section(
            Some(Pred::Overlaps("roles", Param::PrivilegedRoles)),
            vec![],
            vec![count("requests", None)],
        );
        assert!(run(s, &ListParams::default(), &records).is_empty());
    }

    #[test]
    fn baseline_keeps_only_groups_whose_population_passes() {
        let mut records = vec![
            rec("user", "verified", Some("normally-verified"), None),
            rec("user", "proxy_verified", Some("normally-verified"), None),
            rec("anonymous", "absent", Some("normally-verified"), None),
            rec("anonymous", "absent", Some("half"), None),
            rec("user", "verified", Some("half"), None),
        ];
        // Distinct record ids.
        for (i, r) in records.iter_mut().enumerate() {
            r.record_id = bytes::Bytes::from(format!("{i}"));
        }
        let mut s = section(
            Some(Pred::Eq("identity_kind", "anonymous")),
            vec![by(
                "destination_service",
                GroupExpr::Col("destination_service"),
            )],
            vec![count("requests", None)],
        );
        s.baseline = Some(Baseline {
            keys: vec!["destination_service"],
            pred: Pred::In("token_status", vec!["verified", "proxy_verified"]),
            min_percent: 50,
        });
        let rows = run(s, &ListParams::default(), &records);
        // 2 of 3 is more than half; 1 of 2 is not.
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].keys, [Key::Text("normally-verified".into())]);
    }

    #[test]
    fn coalesce_takes_the_first_present_value_and_distinct_counts_values() {
        let mut a = rec("user", "verified", Some("d"), None);
        a.user_principal = Some("ada".into());
        a.object_id = Some("o1".into());
        let mut b = rec("workload", "absent", Some("d"), None);
        b.display_name = Some("W".into());
        let s = section(
            None,
            vec![by(
                "identity",
                GroupExpr::Coalesce(vec!["user_principal", "display_name"]),
            )],
            vec![
                count("requests", None),
                Measure {
                    name: "objects",
                    kind: MeasureKind::DistinctValues("object_id"),
                    filter: None,
                },
            ],
        );
        let rows = run(s, &ListParams::default(), &[a, b]);
        let keys: Vec<&Key> = rows.iter().map(|r| &r.keys[0]).collect();
        assert_eq!(keys, [&Key::Text("W".into()), &Key::Text("ada".into())]);
        assert_eq!(rows[1].measures, [1, 1]);
    }

    fn person(id: &str, oid: &str, app: &str, upn: Option<&str>, t: i64) -> AuditRecord {
        let mut r = rec("user", "verified", Some("d"), None);
        r.record_id = crate::record::text::copy(id);
        r.object_id = Some(crate::record::text::copy(oid));
        r.app_id = Some(bytes::Bytes::from(format!("id-{app}")));
        r.app_display_name = Some(crate::record::text::copy(app));
        r.user_principal = upn.map(crate::record::text::copy);
        r.start_time = Some(t);
        r
    }

    fn text(s: &str) -> Key {
        Key::Text(s.into())
    }

    #[test]
    fn the_caller_is_the_person_with_the_latest_name_and_the_client_apps_beside() {
        let access_review = super::super::spec::sections().remove(0);
        assert_eq!(access_review.id, "access_review");
        let mut sp = rec("service_principal", "verified", Some("d"), None);
        sp.record_id = "sp".into();
        sp.app_id = Some("app-sp".into());
        sp.object_id = Some("oid-sp".into());
        sp.app_display_name = Some("billing-agent".into());
        sp.start_time = Some(5);
        let records = [
            // Two people without name claims through the same client app.
            person("1", "oid-a", "orders-web", None, 1),
            person("2", "oid-a", "orders-web", None, 2),
            person("3", "oid-b", "orders-web", None, 3),
            // One person through two client apps whose name changes: the newest name wins,
            // also for rows before the change; a later record without a name changes nothing.
            person("4", "oid-c", "orders-web", Some("carol@old.example"), 10),
            person("5", "oid-c", "admin-cli", Some("carol@new.example"), 20),
            person("6", "oid-c", "admin-cli", None, 30),
            sp,
        ];
        let batch = to_record_batch(&records).expect("batch");
        let mut e = Evaluator::new(std::slice::from_ref(&access_review), &ListParams::default());
        e.push(&batch, &vec![true; records.len()]).expect("push");
        let rows = e.finish().remove(0).rows;
        let names: Vec<&str> = access_review.group_by.iter().map(|g| g.name).collect();
        assert_eq!(
            names[..4],
            ["identity_kind", "caller", "caller_id", "client_apps"]
        );
        let got: Vec<(Key, Key, Key, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.keys[1].clone(),
                    r.keys[2].clone(),
                    r.keys[3].clone(),
                    r.measures[0],
                )
            })
            .collect();
        let apps = |v: &[&str]| Key::List(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            got,
            [
                (
                    text("carol@new.example"),
                    text("oid-c"),
                    apps(&["admin-cli", "orders-web"]),
                    3
                ),
                (Key::Null, text("oid-a"), apps(&["orders-web"]), 2),
                (text("billing-agent"), text("app-sp"), apps(&[]), 1),
                (Key::Null, text("oid-b"), apps(&["orders-web"]), 1),
            ]
        );
    }
}
