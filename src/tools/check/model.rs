//! The register model the checker linearizes against: a JSON value that starts as
//! nil and supports `read`, `write`, `cas` and `add`. Values are kept compact
//! ([`State`]) so that search configurations hash and compare cheaply.
//!
//! It may not read histories or search; it only says what each op does to a state.

use std::collections::HashMap;

use serde_json::Value;

/// A register value, compacted. Two `State`s are equal exactly when the JSON values
/// they stand for are equal (`1` and `1.0` differ), given one [`Interner`] per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum State {
    /// The key is missing (JSON null): the register's starting value.
    Nil,
    /// A JSON integer that fits an `i64`; `add` works on these.
    Int(i64),
    /// Any other JSON value, interned.
    Other(u32),
    /// A value we know nothing about. Only window checks start here (a window that
    /// begins mid-history); the first op that observes it pins it.
    Any,
}

/// Maps JSON values that are not nil or small integers to ids, per key.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Canonical JSON text (serde_json sorts object keys) to id.
    ids: HashMap<String, u32>,
}

impl Interner {
    /// The compact form of `v`.
    pub(crate) fn state(&mut self, v: &Value) -> State {
        if v.is_null() {
            return State::Nil;
        }
        if let Some(x) = v.as_i64() {
            return State::Int(x); // only JSON integers: `1.0` is interned below
        }
        let next = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        let mut text = v.to_string();
        if text.contains("-0.0") {
            // -0.0 equals 0.0, as under Knossos (Clojure's `=` on doubles).
            let mut v = v.clone();
            zero_the_minus_zeros(&mut v);
            text = v.to_string();
        }
        State::Other(*self.ids.entry(text).or_insert(next))
    }
}

/// Writes every double -0.0 in `v` (at any depth) as 0.0.
fn zero_the_minus_zeros(v: &mut Value) {
    match v {
        Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => {
            if let Some(z) = serde_json::Number::from_f64(0.0) {
                *n = z;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(zero_the_minus_zeros),
        Value::Object(m) => m.values_mut().for_each(zero_the_minus_zeros),
        _ => {}
    }
}

/// What an op does to the register, with its observed result where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An ok read that returned this value.
    Read(State),
    /// A write of this value.
    Write(State),
    /// A compare-and-set from the first value to the second.
    Cas(State, State),
    /// An add of `delta`; `total` is the new value when the reply said so.
    Add {
        /// The increment (a missing key counts as 0).
        delta: i64,
        /// The value after the add, known only for ok adds.
        total: Option<State>,
    },
}

impl Kind {
    /// True for ops that leave the state as they found it in *every* state where
    /// they can take effect (reads, `cas` from x to x): the search may take them
    /// early. Not `add` of 0: it turns a missing key (nil) into 0, and a key can
    /// be nil again later (`write null`), so "unchanged here" is not enough.
    pub(crate) fn never_changes_state(&self) -> bool {
        match *self {
            Kind::Read(_) => true,
            Kind::Cas(from, to) => from == to,
            Kind::Add { .. } | Kind::Write(_) => false,
        }
    }
}

/// Applies `kind` to `state`: the new state, or `None` if the op cannot take effect
/// (with its observed result) in that state.
pub(crate) fn step(state: State, kind: &Kind) -> Option<State> {
    match *kind {
        Kind::Read(v) => (state == State::Any || state == v).then_some(v),
        Kind::Write(v) => Some(v),
        Kind::Cas(from, to) => (state == State::Any || state == from).then_some(to),
        Kind::Add { delta, total } => add(state, delta, total),
    }
}

fn add(state: State, delta: i64, total: Option<State>) -> Option<State> {
    let current = match state {
        State::Nil => 0,
        State::Int(x) => x,
        State::Any => return Some(total.unwrap_or(State::Any)),
        State::Other(_) => return None,
    };
    let next = State::Int(current.checked_add(delta)?);
    match total {
        None => Some(next),
        Some(t) => (t == next).then_some(next),
    }
}

/// One op ready for the search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelOp {
    /// The invoke's `time` (ns). Op A precedes op B in real time iff A's `ret` is
    /// less than B's `call`; equal times are concurrent (Knossos, Porcupine).
    pub call: u64,
    /// The ok completion's `time`; `None` for ops that may take effect at any
    /// later point or never (`info`, unfinished, or optional in a window check).
    pub ret: Option<u64>,
    /// The effect and observed result.
    pub kind: Kind,
    /// Index of this op's [`super::pairs::Pair`], to quote it in a report.
    pub pair: usize,
}

impl ModelOp {
    /// This op as an optional one (may take effect at any point after its invoke,
    /// or never); `None` for reads, which as optional ops constrain nothing.
    pub(crate) fn as_optional(&self) -> Option<ModelOp> {
        if matches!(self.kind, Kind::Read(_)) {
            return None;
        }
        Some(ModelOp {
            ret: None,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minus_zero_and_zero_are_one_value_and_integers_stay_apart_from_doubles() {
        let mut i = Interner::default();
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert_eq!(i.state(&parse("-0.0")), i.state(&parse("0.0")));
        assert_eq!(
            i.state(&parse("[-0.0,{\"a\":-0.0}]")),
            i.state(&parse("[0.0,{\"a\":0.0}]"))
        );
        assert_ne!(i.state(&parse("0.0")), i.state(&parse("0")));
        assert_ne!(i.state(&parse("\"-0.0\"")), i.state(&parse("\"0.0\"")));
    }

    #[test]
    fn integers_and_floats_differ() {
        let mut i = Interner::default();
        assert_eq!(i.state(&json!(1)), State::Int(1));
        assert_ne!(i.state(&json!(1.0)), State::Int(1));
        assert_eq!(
            i.state(&json!({"a": 1, "b": 2})),
            i.state(&json!({"b": 2, "a": 1}))
        );
        assert_eq!(i.state(&json!(null)), State::Nil);
    }

    #[test]
    fn add_treats_missing_as_zero_and_checks_total() {
        let ok = Kind::Add {
            delta: 3,
            total: Some(State::Int(3)),
        };
        assert_eq!(step(State::Nil, &ok), Some(State::Int(3)));
        assert_eq!(step(State::Int(1), &ok), None);
        let info = Kind::Add {
            delta: 2,
            total: None,
        };
        assert_eq!(step(State::Int(1), &info), Some(State::Int(3)));
        assert_eq!(step(State::Other(0), &info), None);
    }

    #[test]
    fn any_is_pinned_by_the_first_observation() {
        assert_eq!(
            step(State::Any, &Kind::Read(State::Int(4))),
            Some(State::Int(4))
        );
        let cas = Kind::Cas(State::Int(1), State::Int(2));
        assert_eq!(step(State::Any, &cas), Some(State::Int(2)));
        assert_eq!(step(State::Int(3), &cas), None);
        assert_eq!(step(State::Nil, &Kind::Read(State::Nil)), Some(State::Nil));
    }

    #[test]
    fn an_add_of_zero_changes_a_missing_key() {
        let add0 = Kind::Add {
            delta: 0,
            total: Some(State::Int(0)),
        };
        assert_eq!(step(State::Nil, &add0), Some(State::Int(0)));
        assert!(!add0.never_changes_state());
        assert!(Kind::Read(State::Nil).never_changes_state());
        assert!(Kind::Cas(State::Int(1), State::Int(1)).never_changes_state());
    }
}
