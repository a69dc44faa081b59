//! SHA-256 of two messages at once with the x86 SHA extensions.
//!
//! One SHA-256 is a chain of dependent `sha256rnds2` instructions: a core runs it at the
//! instruction's latency, not its throughput. Two independent messages interleaved in one
//! loop keep the unit busy (Linux does the same for dm-verity/fs-verity). Results are those
//! of `sha2::Sha256` (checked by `tests/core/test_native.py` through `verify_run` and by
//! the unit tests below); without the SHA extensions the messages are hashed one by one.
//!
//! A message is `prefix || data`, so that an RFC 6962 leaf hash (`0x00 || header`) needs no
//! copy of the header.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// `prefix || data`.
#[derive(Clone, Copy)]
pub struct Msg<'a> {
    pub prefix: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> Msg<'a> {
    #[inline]
    fn len(&self) -> usize {
        self.prefix.len() + self.data.len()
    }

    /// Blocks of the padded message.
    #[inline]
    fn blocks(&self) -> usize {
        (self.len() + 9).div_ceil(64)
    }

    /// Block `i` of `blocks` of the padded message: a slice of `data` when it lies there
    /// whole, else assembled in `buf`.
    #[inline]
    fn block<'b>(&self, i: usize, blocks: usize, buf: &'b mut [u8; 64]) -> &'b [u8; 64]
    where
        'a: 'b,
    {
        let start = 64 * i;
        let plen = self.prefix.len();
        let len = self.len();
        if start >= plen && start + 64 <= len {
            let at = start - plen;
            return self.data[at..at + 64].try_into().expect("64 bytes");
        }
        buf.fill(0);
        // prefix bytes in this block
        if start < plen {
            let end = plen.min(start + 64);
            buf[..end - start].copy_from_slice(&self.prefix[start..end]);
        }
        // data bytes in this block
        let lo = start.max(plen);
        let hi = len.min(start + 64);
        if lo < hi {
            buf[lo - start..hi - start].copy_from_slice(&self.data[lo - plen..hi - plen]);
        }
        if len >= start && len < start + 64 {
            buf[len - start] = 0x80;
        }
        if i + 1 == blocks {
            buf[56..].copy_from_slice(&((len as u64) * 8).to_be_bytes());
        }
        buf
    }
}

fn to_bytes(state: &[u32; 8]) -> Hash {
    let mut out = [0u8; 32];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_be_bytes());
    }
    out
}

/// SHA-256 of one message.
pub fn digest(m: Msg<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(m.prefix);
    h.update(m.data);
    h.finalize().into()
}

/// SHA-256 of two messages.
pub fn digest2(a: Msg<'_>, b: Msg<'_>) -> (Hash, Hash) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        let (na, nb) = (a.blocks(), b.blocks());
        let common = na.min(nb);
        let (mut sa, mut sb) = (H0, H0);
        // SAFETY: the CPU has the features x86::compress2 is compiled for (checked above).
        unsafe {
            x86::compress2(&mut sa, &a, na, &mut sb, &b, nb, common);
            x86::compress1(&mut sa, &a, common, na);
            x86::compress1(&mut sb, &b, common, nb);
        }
        return (to_bytes(&sa), to_bytes(&sb));
    }
    (digest(a), digest(b))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Msg;
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("sha")
                && is_x86_feature_detected!("sse2")
                && is_x86_feature_detected!("ssse3")
                && is_x86_feature_detected!("sse4.1")
        })
    }

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// [u32; 8] state -> (ABEF, CDGH) registers.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load_state(state: &[u32; 8]) -> (__m128i, __m128i) {
        let p = state.as_ptr() as *const __m128i;
        let dcba = _mm_loadu_si128(p);
        let efgh = _mm_loadu_si128(p.add(1));
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(efgh, 0x1B);
        (_mm_alignr_epi8(cdab, efgh, 8), _mm_blend_epi16(efgh, cdab, 0xF0))
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store_state(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let p = state.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(p, _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(p.add(1), _mm_alignr_epi8(dchg, feba, 8));
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn words(block: &[u8; 64], mask: __m128i) -> [__m128i; 16] {
        let p = block.as_ptr() as *const __m128i;
        let z = _mm_setzero_si128();
        let mut w = [z; 16];
        for (i, wi) in w.iter_mut().take(4).enumerate() {
            *wi = _mm_shuffle_epi8(_mm_loadu_si128(p.add(i)), mask);
        }
        w
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn schedule(v0: __m128i, v1: __m128i, v2: __m128i, v3: __m128i) -> __m128i {
        _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(v0, v1), _mm_alignr_epi8(v3, v2, 4)),
            v3,
        )
    }

    /// Blocks `from..blocks` of `m`, one message alone.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress1(state: &mut [u32; 8], m: &Msg<'_>, from: usize, blocks: usize) {
        if from >= blocks {
            return;
        }
        let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let (mut abef, mut cdgh) = load_state(state);
        let mut buf = [0u8; 64];
        for i in from..blocks {
            let (save0, save1) = (abef, cdgh);
            let mut w = words(m.block(i, blocks, &mut buf), mask);
            for r in 0..16 {
                if r >= 4 {
                    w[r] = schedule(w[r - 4], w[r - 3], w[r - 2], w[r - 1]);
                }
                let k = _mm_loadu_si128(K.as_ptr().add(4 * r) as *const __m128i);
                let t = _mm_add_epi32(w[r], k);
                cdgh = _mm_sha256rnds2_epu32(cdgh, abef, t);
                abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(t, 0x0E));
            }
            abef = _mm_add_epi32(abef, save0);
            cdgh = _mm_add_epi32(cdgh, save1);
        }
        store_state(state, abef, cdgh);
    }

    /// The first `common` blocks of `a` and `b`, interleaved.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress2(
        sa: &mut [u32; 8],
        a: &Msg<'_>,
        na: usize,
        sb: &mut [u32; 8],
        b: &Msg<'_>,
        nb: usize,
        common: usize,
    ) {
        let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let (mut abef0, mut cdgh0) = load_state(sa);
        let (mut abef1, mut cdgh1) = load_state(sb);
        let (mut buf0, mut buf1) = ([0u8; 64], [0u8; 64]);
        for i in 0..common {
            let (save0, save1, save2, save3) = (abef0, cdgh0, abef1, cdgh1);
            let mut w0 = words(a.block(i, na, &mut buf0), mask);
            let mut w1 = words(b.block(i, nb, &mut buf1), mask);
            for r in 0..16 {
                if r >= 4 {
                    w0[r] = schedule(w0[r - 4], w0[r - 3], w0[r - 2], w0[r - 1]);
                    w1[r] = schedule(w1[r - 4], w1[r - 3], w1[r - 2], w1[r - 1]);
                }
                let k = _mm_loadu_si128(K.as_ptr().add(4 * r) as *const __m128i);
                let t0 = _mm_add_epi32(w0[r], k);
                let t1 = _mm_add_epi32(w1[r], k);
                cdgh0 = _mm_sha256rnds2_epu32(cdgh0, abef0, t0);
                cdgh1 = _mm_sha256rnds2_epu32(cdgh1, abef1, t1);
                abef0 = _mm_sha256rnds2_epu32(abef0, cdgh0, _mm_shuffle_epi32(t0, 0x0E));
                abef1 = _mm_sha256rnds2_epu32(abef1, cdgh1, _mm_shuffle_epi32(t1, 0x0E));
            }
            abef0 = _mm_add_epi32(abef0, save0);
            cdgh0 = _mm_add_epi32(cdgh0, save1);
            abef1 = _mm_add_epi32(abef1, save2);
            cdgh1 = _mm_add_epi32(cdgh1, save3);
        }
        store_state(sa, abef0, cdgh0);
        store_state(sb, abef1, cdgh1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn pairs_equal_sha2() {
        let lens = [0usize, 1, 2, 54, 55, 56, 57, 63, 64, 65, 118, 119, 120, 127, 128, 129, 1000, 10240];
        for &la in &lens {
            for &lb in &lens {
                for (pa, pb) in [(&[][..], &[][..]), (&[0u8][..], &[0u8][..]), (&[][..], &[1u8, 2][..])] {
                    let (da, db) = (bytes(la, 3), bytes(lb, 7));
                    let (ha, hb) =
                        digest2(Msg { prefix: pa, data: &da }, Msg { prefix: pb, data: &db });
                    let mut want = Sha256::new();
                    want.update(pa);
                    want.update(&da);
                    assert_eq!(ha, <[u8; 32]>::from(want.finalize()), "a {la} {lb}");
                    let mut want = Sha256::new();
                    want.update(pb);
                    want.update(&db);
                    assert_eq!(hb, <[u8; 32]>::from(want.finalize()), "b {la} {lb}");
                }
            }
        }
    }
}
