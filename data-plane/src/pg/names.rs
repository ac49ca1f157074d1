//! The named prepared statements and portals of one upstream session, as the server holds them.
//!
//! Protocol-level statements (Parse) and SQL ones (PREPARE) share one namespace in PostgreSQL, as
//! do portals (Bind) and cursors (DECLARE). The proxy keeps two views of it:
//!
//! - [`Names`], the *confirmed* view, changed only by what the server confirmed: ParseComplete,
//!   BindComplete, CloseComplete, the CommandComplete of a PREPARE or DEALLOCATE, the transaction
//!   status of ReadyForQuery. A failed or skipped message changes nothing.
//! - [`Overlay`], what the agent sent in the current extended-protocol segment (since its last
//!   Sync or Query). It is exact for every message of the segment that runs: if anything in the
//!   segment fails, the server skips everything after it up to the Sync.
//!
//! A name the overlay does not settle is read from the confirmed view once every message before
//! the segment has been answered (the relay waits for that; it is rare, since clients wait for a
//! statement's preparation before using it in a later segment). A name nobody knows is refused.

use super::classify::{Analysis, NameOp};
use super::mask::Column;
use std::collections::HashMap;
use std::sync::Arc;

/// A prepared statement: the text the server stores for it (what it logs when it runs), what
/// running it does, and its result columns once a Describe told them (the types decide how
/// binary values are masked; kept per statement, since the same text prepared with other
/// parameter types can return other types).
#[derive(Debug)]
pub struct Prepared {
    pub text: Arc<str>,
    pub analysis: Arc<Analysis>,
    pub described: std::sync::OnceLock<Arc<[Column]>>,
}

impl Prepared {
    pub fn new(text: Arc<str>, analysis: Arc<Analysis>) -> Self {
        Prepared { text, analysis, described: std::sync::OnceLock::new() }
    }
}

/// A portal (Bind) or cursor (DECLARE).
#[derive(Debug)]
pub struct Portal {
    pub statement: Arc<Prepared>,
    /// The prepared statement it was bound from (`""` for the unnamed one and for cursors).
    pub prepared: String,
    pub params: Vec<Option<String>>,
    pub result_formats: Vec<i16>,
    /// `DECLARE ... WITH HOLD`: it outlives its transaction.
    pub holdable: bool,
    /// Made by a Bind (not a DECLARE): its statement was judged when prepared and is judged
    /// again when it runs, at Execute.
    pub bound: bool,
}

/// One change to the names.
#[derive(Debug, Clone)]
pub enum Change {
    /// Define (`Some`) or drop (`None`) a prepared statement.
    Statement(String, Option<Arc<Prepared>>),
    /// `DEALLOCATE ALL`.
    AllStatements,
    /// Define (`Some`) or drop (`None`) a portal.
    Portal(String, Option<Arc<Portal>>),
    /// `CLOSE ALL`.
    AllPortals,
    /// The transaction ended: portals that are not held cursors end with it.
    EndTransaction,
}

/// What a Query message does before it runs anything: the unnamed statement and portal go.
pub fn query_start() -> Vec<Change> {
    vec![Change::Statement(String::new(), None), Change::Portal(String::new(), None)]
}

/// The changes a statement's operations make when they succeed, with the index of the
/// top-level statement making each. `text` is what the server stores as a prepared statement's
/// or cursor's source: the whole text of the message that defined it.
pub fn changes_of(analysis: &Analysis, text: &Arc<str>) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    for (index, op) in &analysis.ops {
        let change = match op {
            NameOp::Prepare { name, inner } => {
                Change::Statement(name.clone(), Some(Arc::new(Prepared::new(text.clone(), inner.clone()))))
            }
            NameOp::Deallocate(Some(name)) => Change::Statement(name.clone(), None),
            NameOp::Deallocate(None) => Change::AllStatements,
            NameOp::DiscardAll => {
                changes.push((*index, Change::AllStatements));
                Change::AllPortals
            }
            NameOp::Declare { name, holdable, inner } => {
                let statement = Arc::new(Prepared::new(text.clone(), inner.clone()));
                let portal = Portal {
                    statement,
                    prepared: String::new(),
                    params: Vec::new(),
                    result_formats: Vec::new(),
                    holdable: *holdable,
                    bound: false,
                };
                Change::Portal(name.clone(), Some(Arc::new(portal)))
            }
            NameOp::Close(Some(name)) => Change::Portal(name.clone(), None),
            NameOp::Close(None) => Change::AllPortals,
            NameOp::EndTransaction => Change::EndTransaction,
            NameOp::Execute { .. } | NameOp::Fetch { .. } => continue,
        };
        changes.push((*index, change));
    }
    changes
}

/// The confirmed view.
#[derive(Default)]
pub struct Names {
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Arc<Portal>>,
}

impl Names {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Statement(name, Some(p)) => {
                self.statements.insert(name.clone(), p.clone());
            }
            Change::Statement(name, None) => {
                self.statements.remove(name);
            }
            Change::AllStatements => self.statements.clear(),
            Change::Portal(name, Some(p)) => {
                self.portals.insert(name.clone(), p.clone());
            }
            Change::Portal(name, None) => {
                self.portals.remove(name);
            }
            Change::AllPortals => self.portals.clear(),
            Change::EndTransaction => self.portals.retain(|_, p| p.holdable),
        }
    }

    pub fn statement(&self, name: &str) -> Option<Arc<Prepared>> {
        self.statements.get(name).cloned()
    }

    pub fn portal(&self, name: &str) -> Option<Arc<Portal>> {
        self.portals.get(name).cloned()
    }

    /// The portals, by name.
    pub fn portals(&self) -> impl Iterator<Item = (&String, &Arc<Portal>)> {
        self.portals.iter()
    }

    /// Named statements held (the unnamed one is not counted).
    pub fn statement_count(&self) -> usize {
        self.statements.keys().filter(|name| !name.is_empty()).count()
    }
}

/// What the overlay says about a name.
pub enum Lookup<T> {
    Known(T),
    Absent,
    /// Not changed in this segment: ask the confirmed view.
    Confirmed,
    /// A portal the segment's transaction end may have closed: only a held cursor survives.
    ConfirmedIfHoldable,
}

/// The current segment's changes, assumed to succeed.
#[derive(Default)]
pub struct Overlay {
    statements: HashMap<String, Option<Arc<Prepared>>>,
    portals: HashMap<String, Option<Arc<Portal>>>,
    all_statements: bool,
    all_portals: bool,
    ended: bool,
}

impl Overlay {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Statement(name, p) => {
                self.statements.insert(name.clone(), p.clone());
            }
            Change::AllStatements => {
                self.statements.clear();
                self.all_statements = true;
            }
            Change::Portal(name, p) => {
                self.portals.insert(name.clone(), p.clone());
            }
            Change::AllPortals => {
                self.portals.clear();
                self.all_portals = true;
            }
            Change::EndTransaction => {
                // A portal closed in this segment stays closed; one defined here ends unless held.
                for portal in self.portals.values_mut() {
                    if portal.as_ref().is_some_and(|p| !p.holdable) {
                        *portal = None;
                    }
                }
                self.ended = true;
            }
        }
    }

    /// A new segment begins (the agent sent a Sync or a Query).
    pub fn clear(&mut self) {
        *self = Overlay::default();
    }

    pub fn statement(&self, name: &str) -> Lookup<Arc<Prepared>> {
        match self.statements.get(name) {
            Some(Some(p)) => Lookup::Known(p.clone()),
            Some(None) => Lookup::Absent,
            None if self.all_statements => Lookup::Absent,
            None => Lookup::Confirmed,
        }
    }

    pub fn portal(&self, name: &str) -> Lookup<Arc<Portal>> {
        match self.portals.get(name) {
            Some(Some(p)) => Lookup::Known(p.clone()),
            Some(None) => Lookup::Absent,
            None if self.all_portals => Lookup::Absent,
            None if self.ended => Lookup::ConfirmedIfHoldable,
            None => Lookup::Confirmed,
        }
    }

    /// The portals open once this segment's changes are made, from the confirmed view's.
    pub fn open_portals<'n>(&'n self, confirmed: &'n Names) -> Vec<(&'n String, &'n Arc<Portal>)> {
        let kept = confirmed
            .portals()
            .filter(|(name, p)| !self.portals.contains_key(*name) && !self.all_portals && (!self.ended || p.holdable));
        let here = self.portals.iter().filter_map(|(name, p)| p.as_ref().map(|p| (name, p)));
        kept.chain(here).collect()
    }

    /// Statements this segment defines that the confirmed view may not have yet.
    pub fn defined(&self) -> usize {
        self.statements.iter().filter(|(name, p)| !name.is_empty() && p.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(text: &str) -> Arc<Prepared> {
        Arc::new(Prepared::new(Arc::from(text), Arc::new(Analysis::default())))
    }

    fn portal(text: &str, holdable: bool) -> Arc<Portal> {
        Arc::new(Portal {
            statement: prepared(text),
            prepared: String::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
            holdable,
            bound: false,
        })
    }

    #[test]
    fn the_overlay_settles_what_the_segment_changed_and_defers_the_rest() {
        let mut overlay = Overlay::default();
        overlay.apply(&Change::Statement("a".into(), Some(prepared("select 1"))));
        overlay.apply(&Change::Statement("b".into(), None));
        assert!(matches!(overlay.statement("a"), Lookup::Known(p) if &*p.text == "select 1"));
        assert!(matches!(overlay.statement("b"), Lookup::Absent));
        assert!(matches!(overlay.statement("c"), Lookup::Confirmed));
        overlay.apply(&Change::AllStatements);
        assert!(matches!(overlay.statement("c"), Lookup::Absent));
        overlay.clear();
        assert!(matches!(overlay.statement("a"), Lookup::Confirmed));
    }

    #[test]
    fn transaction_ends_keep_only_held_cursors() {
        let mut names = Names::default();
        names.apply(&Change::Portal("p".into(), Some(portal("select 1", false))));
        names.apply(&Change::Portal("held".into(), Some(portal("select 2", true))));
        names.apply(&Change::EndTransaction);
        assert!(names.portal("p").is_none());
        assert!(names.portal("held").is_some());

        let mut overlay = Overlay::default();
        overlay.apply(&Change::Portal("q".into(), Some(portal("select 3", false))));
        overlay.apply(&Change::EndTransaction);
        assert!(matches!(overlay.portal("q"), Lookup::Absent));
        assert!(matches!(overlay.portal("held"), Lookup::ConfirmedIfHoldable));
    }
}
