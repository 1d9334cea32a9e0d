//! Running `nft`: see [`super`].
