//! `oncekv test`: a Maelstrom-faithful harness (being built: see issue 3).
