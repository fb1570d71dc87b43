//! The hash chain: `h_n = SHA-256("baton-log-v1", stream, n, h_{n-1}, len(bytes), bytes)`. The exact encoding is
//! in the crate docs; auditors re-implement this one function to check a log or an export.

use crate::types::{Hash, StreamId};
use sha2::{Digest, Sha256};

/// Domain tag hashed first in every record, so a record hash can never be confused with another SHA-256 use.
/// It also names the format: a change of encoding gets a new tag.
pub const DOMAIN_TAG: &[u8; 12] = b"baton-log-v1";

/// The previous hash of the first record of every stream.
pub const ZERO_HASH: Hash = [0u8; 32];

/// Computes the hash of record `seq` of `stream`, given the previous record's hash (or [`ZERO_HASH`]).
pub fn chain_hash(stream: &StreamId, seq: u64, prev: &Hash, bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    h.update(stream.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_documented_encoding() {
        let stream = StreamId([7u8; 16]);
        let mut input = Vec::new();
        input.extend_from_slice(b"baton-log-v1");
        input.extend_from_slice(&[7u8; 16]);
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(&[0u8; 32]);
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(b"abc");
        let expected: Hash = Sha256::digest(&input).into();
        assert_eq!(chain_hash(&stream, 1, &ZERO_HASH, b"abc"), expected);
    }

    #[test]
    fn every_input_changes_the_hash() {
        let s = StreamId([1u8; 16]);
        let base = chain_hash(&s, 2, &[9u8; 32], b"event");
        assert_ne!(
            base,
            chain_hash(&StreamId([2u8; 16]), 2, &[9u8; 32], b"event")
        );
        assert_ne!(base, chain_hash(&s, 3, &[9u8; 32], b"event"));
        assert_ne!(base, chain_hash(&s, 2, &[8u8; 32], b"event"));
        assert_ne!(base, chain_hash(&s, 2, &[9u8; 32], b"evenT"));
    }
}
