//! Unpredictable bytes for salts, nonces and cancel keys, from the kernel's random source. Each thread reads it
//! 256 bytes at a time: a login draws two or three small values, and a getrandom(2) call per draw was about
//! 2.5 % of an md5 login's CPU. Bytes read ahead are as unpredictable as bytes read on demand; as with OpenSSL's
//! RAND_bytes, which PostgreSQL uses, they wait in process memory until drawn, and each is drawn once.

use std::cell::RefCell;

const BATCH: usize = 256;

struct Reserve {
    bytes: [u8; BATCH],
    drawn: usize,
}

thread_local! {
    static RESERVE: RefCell<Reserve> = const {
        RefCell::new(Reserve {
            bytes: [0; BATCH],
            drawn: BATCH,
        })
    };
}

/// `N` random bytes. Panics if the kernel gives none: a predictable salt, nonce or key would void what it
/// protects, so stopping is better.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0; N];
    RESERVE.with_borrow_mut(|reserve| {
        let mut filled = 0;
        while filled < N {
            if reserve.drawn == BATCH {
                getrandom::getrandom(&mut reserve.bytes).expect("the OS random source failed");
                reserve.drawn = 0;
            }
            // filled < N and drawn < BATCH here, so n >= 1 and both ranges below are in bounds.
            let n = (N - filled).min(BATCH - reserve.drawn);
            let taken = &mut reserve.bytes[reserve.drawn..reserve.drawn + n];
            out[filled..filled + n].copy_from_slice(taken);
            // Drawn bytes leave the reserve: nothing in memory tells what was handed out.
            taken.fill(0);
            reserve.drawn += n;
            filled += n;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        let draws: Vec<[u8; 16]> = (0..100).map(|_| bytes()).collect();
        for (i, a) in draws.iter().enumerate() {
            assert!(draws[i + 1..].iter().all(|b| b != a), "draw {i} repeated");
        }
    }

    #[test]
    fn a_draw_can_span_refills() {
        let _ = bytes::<BATCH>();
        let _ = bytes::<7>();
        // 7 bytes into the reserve: this draw takes the rest, a whole refill and part of another.
        let long = bytes::<{ 2 * BATCH + 10 }>();
        // A slip in the copying would hand out the zeroes left behind by earlier draws.
        assert!(long.chunks(16).all(|c| c.iter().any(|&b| b != 0)));
    }
}
