//! Linearizability checker (being built: see issue 3).
