//! `list` as history: one bounded row per upgrade ([`UpgradeSummary`]),
//! derived from its log, and the filters the service applies before paging
//! (so that a filtered page is as bounded as an unfiltered one).
//!
//! The rows and the `status` views are not derived per request: [`Summaries`]
//! keeps them, updated by whoever appends an upgrade's events (its loop, and
//! recovery at start, from the one replay it does anyway) with a [`Tracker`]
//! folded event by event. [`summary`] is the same row computed from a whole
//! log (the oracle the maintained one is tested against).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::api::{
    ListPage, ListRequest, StatusView, UpgradeSummary, PAGE_BYTES, STATUSES, SUMMARY_REASON_CHARS,
};
use super::view;
use crate::core::{self, Event, State};

/// The filters of one `list` request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    cluster: Option<String>,
    statuses: Vec<String>,
    since_ms: Option<u64>,
    include_plans: bool,
}

impl Filter {
    /// The request's filters; an unknown status is refused naming the known ones.
    pub(crate) fn of(request: &ListRequest) -> Result<Filter, String> {
        for status in &request.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(format!(
                    "unknown status `{status}` (the statuses are {})",
                    STATUSES.join(", ")
                ));
            }
        }
        Ok(Filter {
            cluster: request.cluster.clone(),
            statuses: request.status.clone(),
            since_ms: request.since_ms,
            // Asking for planned runs by status asks for plans.
            include_plans: request.include_plans || request.status.iter().any(|s| s == "planned"),
        })
    }

    /// Whether `row` is shown.
    pub(crate) fn keeps(&self, row: &UpgradeSummary) -> bool {
        if row.kind == "plan" && !self.include_plans {
            return false;
        }
        if self.cluster.as_ref().is_some_and(|c| *c != row.cluster) {
            return false;
        }
        if !self.statuses.is_empty() && !self.statuses.contains(&row.status) {
            return false;
        }
        match self.since_ms {
            // Going at or after `since`: not ended before it (a row with no
            // end goes on). Every upgrade that started since has not ended before.
            Some(since) => row.ended_ms.is_none_or(|ended| ended >= since),
            None => true,
        }
    }
}

/// At most this many upgrades are read for one `list` page: a filter that
/// keeps few of many still answers in bounded time (the page then ends early,
/// with `next_after`, and the client asks for the next).
pub(crate) const LIST_SCAN: usize = 2_000;

/// One page of the history: the upgrade ids in order (oldest first), each
/// read with `load` only when the page still has room, kept if `filter`
/// keeps it. The page stops at `limit` rows (1..=500, default 100), past
/// [`PAGE_BYTES`], or after [`LIST_SCAN`] upgrades read; `next_after` is then
/// the last id read.
pub(crate) fn page<E>(
    ids: impl IntoIterator<Item = String>,
    request: &ListRequest,
    filter: &Filter,
    mut load: impl FnMut(&str) -> Result<Option<UpgradeSummary>, E>,
) -> Result<ListPage, E> {
    let limit = request.limit.unwrap_or(100).clamp(1, 500);
    let mut upgrades = Vec::new();
    let mut bytes = 0;
    let mut scanned = 0;
    let mut last_scanned: Option<String> = None;
    let mut next_after = None;
    for id in ids {
        if request.after.as_ref().is_some_and(|after| id <= *after) {
            continue;
        }
        if upgrades.len() == limit || bytes > PAGE_BYTES || scanned == LIST_SCAN {
            next_after = last_scanned;
            break;
        }
        scanned += 1;
        let row = load(&id)?;
        last_scanned = Some(id);
        if let Some(row) = row.filter(|row| filter.keeps(row)) {
            bytes += serde_json::to_vec(&row).map(|v| v.len()).unwrap_or(0);
            upgrades.push(row);
        }
    }
    Ok(ListPage {
        upgrades,
        next_after,
    })
}

/// The history row of the upgrade whose log is `events` (none for an empty log):
/// a [`Tracker`] folded over the whole log, with the replayed state.
pub(crate) fn summary(upgrade: &str, events: &[Event]) -> Option<UpgradeSummary> {
    let mut tracker = Tracker::default();
    tracker.fold(events);
    tracker.submitted.as_ref()?;
    let state: State = core::replay(events.iter());
    tracker.row(upgrade, &state)
}

/// What a history row needs beyond the upgrade's state, folded event by event
/// (constant work per event): whether it is a plan and who asked (its first
/// `UpgradeSubmitted`), the time of its latest timed event, its event count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    submitted: Option<(bool, String)>,
    last_at_ms: Option<u64>,
    events: u64,
}

impl Tracker {
    /// Takes `events`, appended in this order after those already folded.
    pub(crate) fn fold<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) {
        for event in events {
            if self.submitted.is_none() {
                if let Event::UpgradeSubmitted {
                    plan_only,
                    requested_by,
                    ..
                } = event
                {
                    self.submitted = Some((*plan_only, requested_by.clone()));
                }
            }
            if let Some(at_ms) = event.at_ms() {
                self.last_at_ms = Some(at_ms);
            }
            self.events += 1;
        }
    }

    /// How many events were folded (the upgrade's log head).
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// The row of `upgrade`, whose state after the folded events is `state`
    /// (none before its `UpgradeSubmitted`).
    pub(crate) fn row(&self, upgrade: &str, state: &State) -> Option<UpgradeSummary> {
        let (plan_only, requested_by) = self.submitted.clone()?;
        let (status, mut reason) = view::status_words(&state.status());
        if reason.is_none() && status == "completed" {
            reason = state.skipped_note();
        }
        Some(UpgradeSummary {
            upgrade: upgrade.to_string(),
            kind: if plan_only { "plan" } else { "upgrade" }.to_string(),
            cluster: state.cluster_name().unwrap_or_default().to_string(),
            status,
            reason: reason.map(|r| bounded(&r, SUMMARY_REASON_CHARS)),
            requested_by,
            target_version: state.target_version().map(str::to_string),
            started_ms: state.submitted_ms(),
            ended_ms: if state.is_terminal() {
                self.last_at_ms
            } else {
                None
            },
            events: self.events,
        })
    }
}

/// The `status` views of at most this many finished upgrades are kept (the
/// latest to finish); an older one's `status` replays that one upgrade's log.
/// Views of upgrades in progress are always kept; list rows of every upgrade
/// (a few hundred bytes each, the reason bounded) too.
pub(crate) const FINISHED_VIEWS: usize = 1_000;

/// The `list` row and `status` view of every upgrade in the log, kept up to
/// date as its events are appended (`list` and `status` read them: no replay
/// per request, whatever the history's length).
#[derive(Default)]
pub(crate) struct Summaries {
    inner: RwLock<Kept>,
}

#[derive(Default)]
struct Kept {
    /// By upgrade id (a ULID: sorted as the log's streams are).
    by_upgrade: BTreeMap<String, Summary>,
    /// Finished upgrades whose view is kept, oldest first.
    finished: VecDeque<String>,
}

struct Summary {
    row: Option<UpgradeSummary>,
    view: Option<Arc<StatusView>>,
    terminal: bool,
}

impl Summaries {
    /// Records what `upgrade` shows after the events `tracker` folded, whose
    /// state is `state`. Called once those events are durable.
    pub(crate) fn update(&self, upgrade: &str, tracker: &Tracker, state: &State) {
        let summary = Summary {
            row: tracker.row(upgrade, state),
            view: Some(Arc::new(view::status_view(
                upgrade,
                state,
                tracker.events(),
            ))),
            terminal: state.is_terminal(),
        };
        let mut kept = self.write();
        let was_terminal = kept
            .by_upgrade
            .get(upgrade)
            .is_some_and(|summary| summary.terminal);
        kept.by_upgrade.insert(upgrade.to_string(), summary);
        if state.is_terminal() && !was_terminal {
            kept.finished.push_back(upgrade.to_string());
            while kept.finished.len() > FINISHED_VIEWS {
                if let Some(old) = kept.finished.pop_front() {
                    if let Some(summary) = kept.by_upgrade.get_mut(&old) {
                        summary.view = None;
                    }
                }
            }
        }
    }

    /// The kept `status` view of `upgrade` (none: not in the log, or a
    /// finished upgrade whose view was let go).
    pub(crate) fn view(&self, upgrade: &str) -> Option<Arc<StatusView>> {
        self.read()
            .by_upgrade
            .get(upgrade)
            .and_then(|summary| summary.view.clone())
    }

    /// One `list` page from the kept rows (see [`page`]).
    pub(crate) fn page(&self, request: &ListRequest, filter: &Filter) -> ListPage {
        let kept = self.read();
        let from = match &request.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let ids = kept
            .by_upgrade
            .range((from, Bound::Unbounded))
            .map(|(id, _)| id.clone());
        let loaded: Result<ListPage, std::convert::Infallible> = page(ids, request, filter, |id| {
            Ok(kept
                .by_upgrade
                .get(id)
                .and_then(|summary| summary.row.clone()))
        });
        match loaded {
            Ok(page) => page,
            Err(never) => match never {},
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Kept> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Kept> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, cluster: &str, status: &str, ended_ms: Option<u64>) -> UpgradeSummary {
        UpgradeSummary {
            upgrade: "01J".into(),
            kind: kind.into(),
            cluster: cluster.into(),
            status: status.into(),
            reason: None,
            requested_by: "alice".into(),
            target_version: None,
            started_ms: Some(100),
            ended_ms,
            events: 3,
        }
    }

    fn filter(request: ListRequest) -> Filter {
        Filter::of(&request).unwrap()
    }

    #[test]
    fn filters_keep_what_they_name_and_plans_only_when_asked() {
        let done = row("upgrade", "prod", "completed", Some(1_000));
        let going = row("upgrade", "prod", "running", None);
        let plan = row("plan", "prod", "planned", Some(150));
        let all = filter(ListRequest::default());
        assert!(all.keeps(&done) && all.keeps(&going) && !all.keeps(&plan));
        let plans = filter(ListRequest {
            include_plans: true,
            ..ListRequest::default()
        });
        assert!(plans.keeps(&plan));
        let by_status = filter(ListRequest {
            status: vec!["planned".into()],
            ..ListRequest::default()
        });
        assert!(by_status.keeps(&plan) && !by_status.keeps(&done));
        let other = filter(ListRequest {
            cluster: Some("staging".into()),
            ..ListRequest::default()
        });
        assert!(!other.keeps(&done) && !other.keeps(&going));
        let since = filter(ListRequest {
            since_ms: Some(500),
            ..ListRequest::default()
        });
        assert!(since.keeps(&done), "ended after since");
        assert!(since.keeps(&going), "still going");
        let later = filter(ListRequest {
            since_ms: Some(2_000),
            ..ListRequest::default()
        });
        assert!(!later.keeps(&done) && later.keeps(&going));
    }

    #[test]
    fn pages_stop_at_their_limit_or_scan_bound_and_say_where_to_go_on() {
        let ids = |n: usize| (0..n).map(|i| format!("{i:06}")).collect::<Vec<_>>();
        let halted_every_tenth = |id: &str| -> Result<Option<UpgradeSummary>, ()> {
            let i: usize = id.parse().unwrap();
            let status = if i.is_multiple_of(10) {
                "halted"
            } else {
                "completed"
            };
            Ok(Some(UpgradeSummary {
                upgrade: id.to_string(),
                ..row("upgrade", "prod", status, Some(1_000))
            }))
        };
        let request = ListRequest {
            limit: Some(3),
            status: vec!["halted".into()],
            ..ListRequest::default()
        };
        let filter = Filter::of(&request).unwrap();
        let mut loaded = 0;
        let first = page(ids(100), &request, &filter, |id| {
            loaded += 1;
            halted_every_tenth(id)
        })
        .unwrap();
        let got: Vec<&str> = first.upgrades.iter().map(|r| r.upgrade.as_str()).collect();
        assert_eq!(got, ["000000", "000010", "000020"]);
        assert_eq!(first.next_after.as_deref(), Some("000020"));
        assert_eq!(loaded, 21, "nothing is read past a full page");
        let next = ListRequest {
            after: first.next_after.clone(),
            ..request.clone()
        };
        let second = page(ids(100), &next, &filter, halted_every_tenth).unwrap();
        assert_eq!(second.upgrades[0].upgrade, "000030");
        // A filter that keeps nothing still answers after LIST_SCAN reads,
        // with where to go on; the last page has no next_after.
        let none = ListRequest {
            cluster: Some("other".into()),
            ..ListRequest::default()
        };
        let filter = Filter::of(&none).unwrap();
        let empty = page(ids(LIST_SCAN + 5), &none, &filter, halted_every_tenth).unwrap();
        assert!(empty.upgrades.is_empty());
        assert_eq!(empty.next_after, Some(format!("{:06}", LIST_SCAN - 1)));
        let rest = ListRequest {
            after: empty.next_after,
            ..none.clone()
        };
        let last = page(ids(LIST_SCAN + 5), &rest, &filter, halted_every_tenth).unwrap();
        assert!(last.upgrades.is_empty() && last.next_after.is_none());
    }

    #[test]
    fn an_unknown_status_is_refused_naming_the_known_ones() {
        let err = Filter::of(&ListRequest {
            status: vec!["done".into()],
            ..ListRequest::default()
        })
        .unwrap_err();
        assert!(
            err.contains("`done`") && err.contains("completed, halted"),
            "{err}"
        );
    }

    fn submitted(plan_only: bool) -> Event {
        let mut toml = String::from("[cluster]\nname = \"prod\"\nprofile = \"chef-backend\"\n");
        for i in 1..=3 {
            toml.push_str(&format!(
                "[[nodes]]\nname = \"b{i}\"\naddress = \"10.0.0.{i}\"\nexecutor = \"b{i}\"\n"
            ));
        }
        toml.push_str("[upgrade]\npackage = \"/tmp/chef-backend_3.1.0-1_amd64.deb\"\n");
        Event::UpgradeSubmitted {
            upgrade: "01J".into(),
            cluster: crate::core::ClusterFile::parse("c.toml", &toml).unwrap(),
            package: "/tmp/chef-backend_3.1.0-1_amd64.deb".into(),
            target_version: "3.1.0-1".into(),
            requested_target_version: None,
            requested_package: String::new(),
            gates: vec![],
            plan_only,
            expected_plan_hash: None,
            executors_online: vec![],
            requested_by: "alice".into(),
            at_ms: 1_000,
        }
    }

    #[test]
    fn a_row_says_who_when_and_how_it_ended_from_the_log() {
        assert_eq!(summary("01J", &[]), None);
        let going = summary("01J", &[submitted(false)]).unwrap();
        assert_eq!(
            (
                going.kind.as_str(),
                going.requested_by.as_str(),
                going.started_ms,
                going.ended_ms
            ),
            ("upgrade", "alice", Some(1_000), None),
            "{going:?}"
        );
        assert_eq!(going.cluster, "prod");
        let halted = summary(
            "01J",
            &[
                submitted(true),
                Event::UpgradeHalted {
                    reason: "r".repeat(700),
                    failover_pending: None,
                    at_ms: 9_000,
                },
            ],
        )
        .unwrap();
        assert_eq!(
            (
                halted.kind.as_str(),
                halted.status.as_str(),
                halted.ended_ms,
                halted.events
            ),
            ("plan", "halted", Some(9_000), 2),
            "{halted:?}"
        );
        assert_eq!(halted.reason.unwrap().chars().count(), SUMMARY_REASON_CHARS);
    }

    #[test]
    fn a_row_kept_event_by_event_equals_the_row_of_the_whole_log() {
        let log = [
            submitted(false),
            Event::UpgradePaused {
                by: "bob".into(),
                reason: "lunch".into(),
                at_ms: 2_000,
            },
            Event::UpgradeResumed {
                by: "bob".into(),
                at_ms: 3_000,
            },
            Event::UpgradeHalted {
                reason: "stop".into(),
                failover_pending: None,
                at_ms: 9_000,
            },
        ];
        let summaries = Summaries::default();
        let mut tracker = Tracker::default();
        let mut state = State::default();
        for (i, event) in log.iter().enumerate() {
            tracker.fold([event]);
            state = core::evolve(state, event);
            summaries.update("01J", &tracker, &state);
            let whole = &log[..=i];
            let page = summaries.page(
                &ListRequest::default(),
                &Filter::of(&ListRequest::default()).unwrap(),
            );
            assert_eq!(
                page.upgrades,
                vec![summary("01J", whole).unwrap()],
                "after {i}"
            );
            let replayed: State = core::replay(whole.iter());
            assert_eq!(
                *summaries.view("01J").unwrap(),
                view::status_view("01J", &replayed, whole.len() as u64),
                "after {i}"
            );
        }
    }

    #[test]
    fn views_of_finished_upgrades_are_kept_for_the_latest_only_and_rows_for_all() {
        let summaries = Summaries::default();
        let log = [
            submitted(false),
            Event::UpgradeHalted {
                reason: "stop".into(),
                failover_pending: None,
                at_ms: 9_000,
            },
        ];
        let mut tracker = Tracker::default();
        tracker.fold(&log);
        let state: State = core::replay(log.iter());
        let ids: Vec<String> = (0..FINISHED_VIEWS + 3).map(|i| format!("{i:06}")).collect();
        for id in &ids {
            summaries.update(id, &tracker, &state);
            // Updated again once finished: counted once.
            summaries.update(id, &tracker, &state);
        }
        assert!(summaries.view(&ids[2]).is_none() && summaries.view(&ids[3]).is_some());
        assert!(summaries.view(ids.last().unwrap()).is_some());
        let all = ListRequest {
            limit: Some(500),
            ..ListRequest::default()
        };
        let first = summaries.page(&all, &Filter::of(&all).unwrap());
        assert_eq!(first.upgrades[0].upgrade, ids[0]);
        let next = ListRequest {
            after: first.next_after,
            ..all.clone()
        };
        let second = summaries.page(&next, &Filter::of(&next).unwrap());
        assert_eq!(second.upgrades[0].upgrade, ids[500]);
    }

    #[test]
    fn reasons_are_bounded_by_characters() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(300);
        let cut = bounded(&long, SUMMARY_REASON_CHARS);
        assert_eq!(cut.chars().count(), SUMMARY_REASON_CHARS);
        assert!(cut.ends_with('…'));
    }
}
