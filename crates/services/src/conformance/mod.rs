//! The behaviour every implementation of the edge-facing traits this crate implements must
//! show, written once (feature `conformance`): [`signals`] for `Signals` (presence and
//! typing) and [`engagement`] for `Engagement`. The edge link's suite, and the test edges
//! these suites observe, are in `hubbub_registry::conformance`.
//!
//! They live here, behind a feature, because their fixtures are this crate's own: the store
//! traits they set up conversations and posts with, the limits ([`crate::signals::MAX_WATCH`],
//! [`crate::signals::TYPING_LAPSE`]) and [`crate::engagement::EngagementConfig`]. The
//! in-process implementations (`SignalService`, `EngagementService`) are checked in this
//! crate's tests, the distributed ones in `hubbub-cluster`'s, which depends on this crate
//! already: no new dependency, and no cycle. The feature only adds this module; other crates
//! turn it on from their dev-dependencies.
//!
//! As in `hubbub_registry::conformance`, each public async function is one test, a backend
//! instantiates them all with a macro, and the suites never assert on timing: they wait for
//! what must arrive (bounded), and prove that something did not arrive by a later marker
//! arriving first. These functions panic on failure: they are test code that lives in the
//! library so other crates' tests can run them.

pub mod engagement;
pub mod signals;
