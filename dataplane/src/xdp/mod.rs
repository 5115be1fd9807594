//! XDP at the NIC: the served-prefix filter, per-prefix accounting, drain, and flow steering
//! to the executor that owns a flow (docs/xdp.md).

mod object;

pub use object::{object, ObjectMissing};
