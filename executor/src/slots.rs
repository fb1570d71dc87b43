//! Which steps of one node may run side by side: the dispatcher's rule.
//!
//! A step is either a read-only **probe** (the core's [`Action::is_probe`]: it only observes the node) or an
//! **action** (it may change the node). On one node:
//!
//! - an action runs alone: it starts only when nothing else of that node runs, and while it runs nothing else
//!   of that node starts;
//! - probes run beside each other, at most [`MAX_PROBES_PER_NODE`] at once, never beside an action.
//!
//! A step that may not start now is handed back to the consumer by the dispatcher (a delayed nak, as for any
//! busy node), never held here: JetStream stays the only queue, and the dispatcher never waits on one node, so
//! the nodes stay fair to each other. Why probes may overlap: the core schedules several independent probes
//! at once ("probe rounds"), and serializing them per node would make a round as slow as its probes one after
//! the other. Why never beside an action: a probe that runs while an action changes its node would observe a
//! half-changed node, and an action must see its node as the core last observed it.
//!
//! Nothing reserves a node for an action handed back while its probes run: probes that keep arriving could in
//! principle keep it out. With the core as it is they do not: it decides an action on the results of the
//! probes before it, so when it schedules the action its probes of that node have ended or are late copies
//! (redeliveries), which end too. A core that probed a node continuously beside its actions would need a
//! reservation here (hand back that node's new probes while an action of it waits).
//!
//! The kind comes from the request's action name, which the service signed (so it is trusted), through the
//! core's own list ([`Action::from_name`], [`Action::is_probe`]): one list of probes for the core and the
//! executor, none duplicated here. A name this executor does not know counts as an action (the allow list
//! refuses it anyway).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use workflow::core::Action;

/// At most this many probes of one node run at once: the core's bound for one node in a probe round
/// (`workflow::core::decide::ROUND_PROBES_PER_NODE`), so a round never waits on a hand-back; a bound keeps one
/// node's probes from taking every runner process.
pub const MAX_PROBES_PER_NODE: usize = workflow::core::decide::ROUND_PROBES_PER_NODE;

/// What a step does to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Read-only: observes the node and changes nothing.
    Probe,
    /// May change the node.
    Action,
}

impl StepKind {
    /// The kind of a request whose action is named `action` (its wire name).
    pub fn of(action: &str) -> StepKind {
        match Action::from_name(action) {
            Some(a) if a.is_probe() => StepKind::Probe,
            _ => StepKind::Action,
        }
    }
}

/// What runs on one busy node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    /// One action, alone.
    Action,
    /// This many probes (1 to [`MAX_PROBES_PER_NODE`]).
    Probes(usize),
}

/// The steps running now, per node, of the nodes one dispatcher serves.
#[derive(Debug, Default)]
pub struct Slots {
    busy: BTreeMap<String, Busy>,
}

impl Slots {
    /// Take a slot for a step of `kind` on `node`, if the rule lets it start now.
    pub fn try_start(&mut self, node: &str, kind: StepKind) -> bool {
        let next = match (self.busy.get(node), kind) {
            (None, StepKind::Action) => Busy::Action,
            (None, StepKind::Probe) => Busy::Probes(1),
            (Some(Busy::Probes(n)), StepKind::Probe) if *n < MAX_PROBES_PER_NODE => {
                Busy::Probes(n + 1)
            }
            (Some(_), _) => return false,
        };
        self.busy.insert(node.to_string(), next);
        true
    }

    /// Give back the slot a step of `kind` on `node` took.
    pub fn finish(&mut self, node: &str, kind: StepKind) {
        let left = match (self.busy.get(node), kind) {
            (Some(Busy::Action), StepKind::Action) | (Some(Busy::Probes(1)), StepKind::Probe) => {
                None
            }
            (Some(Busy::Probes(n)), StepKind::Probe) => Some(Busy::Probes(n - 1)),
            (held, _) => {
                // A slot that was never taken: a bug in the dispatcher. Keep the record as it is (a lost
                // release would only hand steps back, never let two actions run at once).
                tracing::error!(node = %node, kind = ?kind, held = ?held, "a step finished that held no slot");
                return;
            }
        };
        match left {
            Some(busy) => self.busy.insert(node.to_string(), busy),
            None => self.busy.remove(node),
        };
    }

    /// Whether no node of `nodes` could start any step now (each runs an action or the most probes): the
    /// dispatcher then waits for a step to end instead of pulling one it would only hand back.
    pub fn full(&self, nodes: &[String]) -> bool {
        nodes.iter().all(|node| match self.busy.get(node) {
            None => false,
            Some(Busy::Action) => true,
            Some(Busy::Probes(n)) => *n >= MAX_PROBES_PER_NODE,
        })
    }

    /// How many steps run now, on every node.
    pub fn running(&self) -> usize {
        self.busy
            .values()
            .map(|b| match b {
                Busy::Action => 1,
                Busy::Probes(n) => *n,
            })
            .sum()
    }
}

/// The slots of one dispatcher, shared with its step tasks (each gives its slot back through a [`Slot`]).
pub type SharedSlots = Arc<Mutex<Slots>>;

/// A step's place on its node, given back when dropped: by the step's task as soon as the step is answered
/// (its command ended and its outcome is in the ledger), before the result is published. So the node is free
/// by the time the service can send the node's next step; released only when the task ended, that step could
/// arrive first and be handed back for nothing (a delayed nak on every action after a probe).
#[derive(Debug)]
pub struct Slot {
    slots: SharedSlots,
    node: String,
    kind: StepKind,
}

impl Slot {
    /// Take a slot for a step of `kind` on `node`, if it may start now.
    pub fn take(slots: &SharedSlots, node: &str, kind: StepKind) -> Option<Slot> {
        let taken = lock(slots).try_start(node, kind);
        taken.then(|| Slot {
            slots: slots.clone(),
            node: node.to_string(),
            kind,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots).finish(&self.node, self.kind);
    }
}

/// The slots, also after a panic elsewhere (each change is one map update: never half made).
pub fn lock(slots: &SharedSlots) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::StepKind::{Action, Probe};
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_kind_comes_from_the_cores_list_of_probes() {
        for action in workflow::core::Action::ALL {
            let expected = if action.is_probe() { Probe } else { Action };
            assert_eq!(StepKind::of(action.as_str()), expected, "{action}");
        }
        assert_eq!(StepKind::of("probe_status"), Probe);
        assert_eq!(StepKind::of("demote"), Action);
        // Unknown names (refused by the allow list anyway) are never taken for probes.
        assert_eq!(StepKind::of("probe_anything"), Action);
        assert_eq!(StepKind::of(""), Action);
    }

    #[test]
    fn probes_of_one_node_run_side_by_side_up_to_the_bound() {
        let mut s = Slots::default();
        for i in 0..MAX_PROBES_PER_NODE {
            assert!(s.try_start("n1", Probe), "probe {i}");
        }
        assert!(!s.try_start("n1", Probe), "one more than the bound");
        assert_eq!(s.running(), MAX_PROBES_PER_NODE);
        s.finish("n1", Probe);
        assert!(s.try_start("n1", Probe), "a freed slot is taken again");
    }

    #[test]
    fn an_action_waits_for_its_nodes_probes_and_probes_wait_for_its_action() {
        let mut s = Slots::default();
        assert!(s.try_start("n1", Probe));
        assert!(s.try_start("n1", Probe));
        assert!(!s.try_start("n1", Action), "an action beside probes");
        s.finish("n1", Probe);
        assert!(
            !s.try_start("n1", Action),
            "an action beside the last probe"
        );
        s.finish("n1", Probe);
        assert!(s.try_start("n1", Action), "the node is idle");
        assert!(!s.try_start("n1", Probe), "a probe beside an action");
        assert!(!s.try_start("n1", Action), "two actions of one node");
        s.finish("n1", Action);
        assert!(s.try_start("n1", Probe));
        assert_eq!(s.running(), 1);
    }

    #[test]
    fn nodes_are_independent() {
        let mut s = Slots::default();
        assert!(s.try_start("n1", Action));
        assert!(s.try_start("n2", Probe));
        assert!(s.try_start("n3", Action));
        assert!(s.try_start("n2", Probe));
        s.finish("n1", Action);
        assert!(s.try_start("n1", Probe));
        assert_eq!(s.running(), 4);
    }

    #[test]
    fn a_slot_is_given_back_when_dropped() {
        let slots = SharedSlots::default();
        let probe = Slot::take(&slots, "n1", Probe).expect("an idle node");
        assert!(Slot::take(&slots, "n1", Action).is_none());
        drop(probe);
        let action = Slot::take(&slots, "n1", Action).expect("free again");
        assert!(Slot::take(&slots, "n1", Probe).is_none());
        drop(action);
        assert_eq!(lock(&slots).running(), 0);
    }

    #[test]
    fn full_only_when_no_node_can_start_anything() {
        let all = nodes(&["n1", "n2"]);
        let mut s = Slots::default();
        assert!(!s.full(&all));
        assert!(s.try_start("n1", Action));
        assert!(!s.full(&all), "n2 is idle");
        assert!(s.try_start("n2", Probe));
        assert!(!s.full(&all), "n2 can take more probes");
        for _ in 1..MAX_PROBES_PER_NODE {
            assert!(s.try_start("n2", Probe));
        }
        assert!(s.full(&all));
        s.finish("n2", Probe);
        assert!(!s.full(&all));
        // A node the dispatcher does not serve never takes a slot, and does not make it full.
        assert!(!Slots::default().full(&nodes(&["n1"])));
    }
}
