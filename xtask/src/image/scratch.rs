//! A VM's scratch disk is made by the shim for every VM: the code lives in
//! [`kiln::disk`] (sparse file, empty ext4, cost independent of the size)
//! and is re-exported here for the image builder's callers.

pub use kiln::disk::{create_scratch, ScratchError, LABEL, MIN_SIZE};
