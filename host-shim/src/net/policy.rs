//! The egress policy: see [`super`].
