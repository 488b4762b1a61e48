//! Sans-IO authentication primitives: the server side pgherd runs toward its
//! clients and the client side it runs toward PostgreSQL. Callers move the
//! bytes; nothing here touches a socket.

pub mod md5;
pub mod random;
pub mod scram;

/// Equality whose running time depends only on the lengths, so a client
/// probing proofs or hashes learns nothing from how long a rejection takes.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}
