//! Claim cursors: where a claim starts walking each project's `available` index.
//!
//! Why: claiming a job turns its `available` row into a `running` one and leaves a dead entry at
//! the front of the partial `available` index, where it stays until a VACUUM. A claim that walks
//! from the front steps over every job claimed since the last VACUUM (~25 ns each), and a VACUUM
//! of a table with a million waiting jobs costs about a second; so with a deep backlog claims
//! either walk long fronts or wait for expensive VACUUMs (issue 21: 7,000 jobs/s at 1,000,000
//! waiting against 26,000 at 20,000). A claim that starts *after the last row this process took*
//! (a B-tree descent straight past the dead front) costs the same at any depth.
//!
//! **Invariant** (per set of kinds and project): every available row of these kinds that lies
//! at or below the cursor, in the index's (priority, id) order, is either locked by another
//! claimer (which takes it) or has been, or will be, reported by a notification that moves the
//! cursor back. Every path that makes a row available sends one, in the transaction that does so,
//! so it is delivered once the row is visible:
//!
//! - enqueue: `project \t priority \t id` of the project's first new row ([`Notice::Rewind`]);
//!   an ordinary enqueue lands after the cursor and moves nothing, while a more urgent job, or a
//!   transaction that committed after a later one (ids are taken before commit), moves it back;
//! - everything else (retries promoted from `scheduled`, a hand-back, a rescued lease, a
//!   pipeline's next step, an operator's retry): an empty payload, which resets every cursor
//!   ([`Notice::Reset`]); the next claim walks in full, as every claim did before cursors.
//!
//! What no notification reports — a claim of another process that rolled back — and any
//! notification lost with the LISTEN connection (whose reconnect also resets) is caught by a
//! full walk at least every [`FULL_WALK_EVERY`]. A claim that was in flight when a cursor moved
//! back never moves it forward again (generations), so a late advance cannot hide a rewound row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a cursor is trusted without a full walk from the front.
pub(super) const FULL_WALK_EVERY: Duration = Duration::from_secs(1);

/// A place in a project's `available` index: (priority, id), the index's order after `project`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    pub priority: i16,
    pub id: i64,
}

impl Position {
    /// Before every row: a walk from here is a full walk.
    pub const START: Position = Position {
        priority: i16::MIN,
        id: i64::MIN,
    };

    /// The last position before `self`: a walk from there takes `self` first.
    fn just_before(self) -> Position {
        Position {
            priority: self.priority,
            id: self.id.saturating_sub(1),
        }
    }
}

/// What a notification on the queue's channel says about claim cursors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Notice {
    /// Rows may have become available anywhere: walk in full next time.
    Reset,
    /// `project`'s rows from `first` on became available.
    Rewind { project: String, first: Position },
}

impl Notice {
    /// Reads a notification's payload; anything unreadable is a reset (always safe).
    pub fn parse(payload: &str) -> Notice {
        let mut parts = payload.splitn(3, '\t');
        let (Some(priority), Some(id), Some(project)) = (parts.next(), parts.next(), parts.next()) else {
            return Notice::Reset;
        };
        match (priority.parse(), id.parse()) {
            (Ok(priority), Ok(id)) if !project.is_empty() => Notice::Rewind {
                project: project.to_string(),
                first: Position { priority, id },
            },
            _ => Notice::Reset,
        }
    }
}

/// Where the next claim of one set of kinds starts.
#[derive(Debug)]
pub(super) struct Plan {
    /// `None`: a full walk (discover the projects with work and start at their fronts).
    pub from: Option<Vec<(String, Position)>>,
    generation: u64,
    started: Instant,
    /// The most projects one claim considers.
    max: usize,
}

impl Plan {
    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.from.is_none()
    }
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    after: Position,
    /// The generation of the last rewind: a claim planned before it cannot advance this cursor.
    rewound: u64,
}

#[derive(Debug)]
struct KindsCursors {
    projects: HashMap<String, Cursor>,
    /// When the last full walk was planned (a reset after it forces the next one).
    full_walk_at: Instant,
    full_walk_generation: u64,
    /// Whether the last full walk found every project with work (fewer than a claim considers);
    /// if not, the others are known only to later full walks, so every claim walks in full.
    complete: bool,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    /// The generation of the last reset.
    reset: u64,
    by_kinds: HashMap<String, KindsCursors>,
}

/// The claim cursors of one queue handle (one process), per set of kinds and project.
#[derive(Debug)]
pub(super) struct ClaimCursors {
    state: Mutex<State>,
    /// [`FULL_WALK_EVERY`] unless a test trusts cursors for longer (ms).
    full_walk_every_ms: AtomicU64,
}

impl ClaimCursors {
    pub fn new(full_walk_every: Duration) -> Self {
        ClaimCursors {
            state: Mutex::new(State::default()),
            full_walk_every_ms: AtomicU64::new(full_walk_every.as_millis() as u64),
        }
    }

    #[cfg(test)]
    pub fn set_full_walk_every(&self, every: Duration) {
        self.full_walk_every_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// The key of a claim's set of kinds (order does not matter).
    pub fn kinds_key(kinds: &[String]) -> String {
        let mut kinds = kinds.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.join("\u{1f}")
    }

    /// Where the next claim for `kinds` starts: a full walk when nothing is known, a reset came,
    /// or the last full walk is older than the interval; otherwise from the cursors of at most
    /// `max` known projects, in name order from the `rotation`-th on (wrapping), so that every
    /// project gets its turn however many there are.
    pub fn plan(&self, kinds: &str, rotation: usize, max: usize) -> Plan {
        let now = Instant::now();
        let full_walk_every = Duration::from_millis(self.full_walk_every_ms.load(Ordering::Relaxed));
        let state = self.state.lock().expect("claim cursors poisoned");
        let generation = state.generation;
        let from = state.by_kinds.get(kinds).and_then(|k| {
            let fresh = k.complete
                && k.full_walk_generation >= state.reset
                && now.duration_since(k.full_walk_at) < full_walk_every
                && !k.projects.is_empty();
            fresh.then(|| {
                let sorted: BTreeMap<&String, Position> = k.projects.iter().map(|(p, c)| (p, c.after)).collect();
                let start = rotation % sorted.len();
                sorted
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(max.min(k.projects.len()))
                    .map(|(p, at)| ((*p).clone(), *at))
                    .collect()
            })
        });
        Plan {
            from,
            generation,
            started: now,
            max,
        }
    }

    /// Records a claim planned by `plan`: the projects it found with work, and the last
    /// position it took in each. Cursors only move forward, and never past a rewind that came
    /// after the plan.
    pub fn record(&self, kinds: &str, plan: &Plan, with_work: &[String], taken: &HashMap<String, Position>) {
        let mut state = self.state.lock().expect("claim cursors poisoned");
        if state.reset > plan.generation {
            return; // the next claim walks in full anyway
        }
        let rewound_since = |c: &Cursor| c.rewound > plan.generation;
        match &plan.from {
            None => {
                let previous = state.by_kinds.remove(kinds).map(|k| k.projects).unwrap_or_default();
                let mut projects: HashMap<String, Cursor> = with_work
                    .iter()
                    .map(|p| {
                        let after = taken.get(p).copied().unwrap_or(Position::START);
                        (p.clone(), Cursor { after, rewound: 0 })
                    })
                    .collect();
                projects.extend(previous.into_iter().filter(|(_, c)| rewound_since(c)));
                state.by_kinds.insert(
                    kinds.to_string(),
                    KindsCursors {
                        projects,
                        full_walk_at: plan.started,
                        full_walk_generation: plan.generation,
                        complete: with_work.len() < plan.max,
                    },
                );
            }
            Some(from) => {
                let Some(k) = state.by_kinds.get_mut(kinds) else {
                    return;
                };
                let with_work: HashSet<&String> = with_work.iter().collect();
                for (project, _) in from {
                    let Some(cursor) = k.projects.get_mut(project) else {
                        continue;
                    };
                    if rewound_since(cursor) {
                        continue;
                    }
                    if !with_work.contains(project) {
                        k.projects.remove(project);
                    } else if let Some(&last) = taken.get(project) {
                        cursor.after = cursor.after.max(last);
                    }
                }
            }
        }
    }

    /// Applies a notification.
    pub fn notice(&self, notice: Notice) {
        let mut state = self.state.lock().expect("claim cursors poisoned");
        state.generation += 1;
        let generation = state.generation;
        match notice {
            Notice::Reset => state.reset = generation,
            Notice::Rewind { project, first } => {
                for k in state.by_kinds.values_mut() {
                    let cursor = k.projects.entry(project.clone()).or_insert(Cursor {
                        after: Position::START,
                        rewound: generation,
                    });
                    cursor.after = cursor.after.min(first.just_before());
                    cursor.rewound = generation;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &str = "noop";

    fn at(priority: i16, id: i64) -> Position {
        Position { priority, id }
    }

    fn taken(entries: &[(&str, Position)]) -> HashMap<String, Position> {
        entries.iter().map(|(p, at)| (p.to_string(), *at)).collect()
    }

    fn cursors() -> ClaimCursors {
        ClaimCursors::new(Duration::from_secs(3600))
    }

    /// A full walk that took `last` in project `a`.
    fn walked(c: &ClaimCursors, last: Position) {
        let plan = c.plan(KINDS, 0, 256);
        assert!(plan.is_full());
        c.record(KINDS, &plan, &["a".into()], &taken(&[("a", last)]));
    }

    #[test]
    fn the_first_claim_walks_in_full_and_later_ones_start_after_what_was_taken() {
        let c = cursors();
        walked(&c, at(5, 128));
        let plan = c.plan(KINDS, 0, 256);
        assert_eq!(plan.from, Some(vec![("a".into(), at(5, 128))]));
        c.record(KINDS, &plan, &["a".into()], &taken(&[("a", at(5, 256))]));
        assert_eq!(c.plan(KINDS, 0, 256).from, Some(vec![("a".into(), at(5, 256))]));
    }

    #[test]
    fn an_urgent_or_late_row_moves_the_cursor_back_and_a_claim_in_flight_cannot_undo_it() {
        let c = cursors();
        walked(&c, at(5, 128));
        let in_flight = c.plan(KINDS, 0, 256);
        c.notice(Notice::Rewind {
            project: "a".into(),
            first: at(1, 900),
        });
        c.record(KINDS, &in_flight, &["a".into()], &taken(&[("a", at(5, 256))]));
        assert_eq!(c.plan(KINDS, 0, 256).from, Some(vec![("a".into(), at(1, 899))]));
        // An ordinary enqueue behind the cursor's position changes nothing.
        c.notice(Notice::Rewind {
            project: "a".into(),
            first: at(5, 5000),
        });
        assert_eq!(c.plan(KINDS, 0, 256).from, Some(vec![("a".into(), at(1, 899))]));
    }

    #[test]
    fn a_new_project_is_walked_from_its_front_and_a_reset_forces_a_full_walk() {
        let c = cursors();
        walked(&c, at(5, 128));
        c.notice(Notice::parse("3\t7000\tbeta"));
        let from = c.plan(KINDS, 0, 256).from.unwrap();
        // A project this process knows nothing of may hold older rows too: from its front.
        assert_eq!(from, vec![("a".into(), at(5, 128)), ("beta".into(), Position::START)]);
        c.notice(Notice::parse(""));
        assert!(c.plan(KINDS, 0, 256).is_full());
    }

    #[test]
    fn projects_without_work_are_forgotten_and_the_interval_forces_full_walks() {
        let c = cursors();
        walked(&c, at(5, 128));
        let plan = c.plan(KINDS, 0, 256);
        c.record(KINDS, &plan, &[], &HashMap::new());
        assert!(c.plan(KINDS, 0, 256).is_full(), "no project known: walk in full");

        let c = ClaimCursors::new(Duration::ZERO);
        walked(&c, at(5, 128));
        assert!(c.plan(KINDS, 0, 256).is_full());
    }

    #[test]
    fn more_projects_than_a_claim_considers_take_turns() {
        let c = cursors();
        let plan = c.plan(KINDS, 0, 256);
        let with_work: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        c.record(KINDS, &plan, &with_work, &HashMap::new());
        let names = |rotation| {
            c.plan(KINDS, rotation, 2)
                .from
                .unwrap()
                .into_iter()
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["a", "b"]);
        assert_eq!(names(1), ["b", "c"]);
        assert_eq!(names(2), ["c", "a"]);
        // A full walk that found as many projects as a claim considers may have missed some.
        let c = cursors();
        let plan = c.plan(KINDS, 0, 3);
        c.record(KINDS, &plan, &with_work, &HashMap::new());
        let plan = c.plan(KINDS, 0, 3);
        assert!(plan.is_full());
        c.record(KINDS, &plan, &with_work[..2], &HashMap::new());
        assert!(!c.plan(KINDS, 0, 3).is_full());
    }

    #[test]
    fn payloads_that_are_not_positions_reset() {
        assert_eq!(Notice::parse(""), Notice::Reset);
        assert_eq!(Notice::parse("x\t1\tp"), Notice::Reset);
        assert_eq!(Notice::parse("1\t2\t"), Notice::Reset);
        assert_eq!(
            Notice::parse("-2\t9\tacme\tcorp"),
            Notice::Rewind {
                project: "acme\tcorp".into(),
                first: at(-2, 9)
            }
        );
        assert_eq!(ClaimCursors::kinds_key(&["b".into(), "a".into()]), "a\u{1f}b");
    }
}
