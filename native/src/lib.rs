//! `streamledger._native`: the optional native accelerator of streamledger's hot paths.
//!
//! The pure-Python code in `streamledger/core` is the reference; every function here gives
//! byte-identical results (checked by `tests/core/test_native.py`) and is only called through
//! `streamledger/core/_accel.py`. Hashing is SHA-256 from the RustCrypto `sha2` crate.
//!
//! * `build_records`: entry format v1 records and leaf hashes of a batch (entry.build_records).
//! * `compact_append_runs`: extend an RFC 6962 compact range by many leaves, the nodes they
//!   complete grouped by level (merkle.CompactRange.append_runs).
//! * `verify_run`: the verifier's fast path over raw record bytes (verify._fast_run); the
//!   hashing of a large chunk is spread over the machine's cores (GIL released).
//! * `unpack_messages`: `(offsets, values)` of a list of confluent-kafka messages (the Kafka
//!   read-ahead), without a Python object per message.
//!
//! On input it cannot handle exactly like the reference (a type other than `bytes`, a field
//! out of range) a function raises `TypeError` / `ValueError` before changing anything, and the
//! caller runs the pure-Python code instead, which then says what is wrong.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

type Hash = [u8; 32];

/// Bumped whenever a signature or semantics here changes; `_accel.py` ignores a stale build.
const ABI: u32 = 3;
const MAX_CONTENT_TYPE: usize = 255;
const MAX_KEY: usize = 65535;

#[inline]
fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
#[inline]
fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 node hash: SHA-256(0x01 || left || right).
#[inline]
fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn as_hash(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Hash> {
    let b = obj
        .downcast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be bytes")))?;
    b.as_bytes()
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be 32 bytes")))
}

fn hashes_from_list(list: &Bound<'_, PyList>, what: &str) -> PyResult<Vec<Hash>> {
    list.iter().map(|h| as_hash(&h, what)).collect()
}

fn hashes_to_list<'py>(py: Python<'py>, hashes: &[Hash]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, hashes.iter().map(|h| PyBytes::new(py, h)))
}

/// Add `leaf` to the compact range (`hashes`, `size`), calling `completed(level, index, hash)`
/// for every perfect node it completes, from the leaf up (CompactRange.append's order).
#[inline]
fn push_leaf(
    hashes: &mut Vec<Hash>,
    size: &mut u64,
    leaf: Hash,
    mut completed: impl FnMut(u32, u64, &Hash),
) {
    let mut index = *size;
    *size += 1;
    let mut h = leaf;
    let mut level = 0u32;
    completed(level, index, &h);
    while index & 1 == 1 {
        // A compact range of an odd size always holds the left sibling.
        let left = hashes.pop().expect("compact range holds one hash per set bit of its size");
        h = node_hash(&left, &h);
        index >>= 1;
        level += 1;
        completed(level, index, &h);
    }
    hashes.push(h);
}

fn check_range(hashes: &[Hash], size: u64) -> PyResult<()> {
    if hashes.len() != size.count_ones() as usize {
        return Err(PyValueError::new_err(
            "compact range must hold one hash per set bit of its size",
        ));
    }
    Ok(())
}

/// `build_records(fixed, first_seq, middle, prev_hash, items) -> (records, leaves)`.
///
/// `fixed` is `header_prefix(ledger, partition)`, `middle` is
/// `timestamp(8) || len(producer)(1) || producer`, `items` a list of
/// `(payload: bytes, key: bytes, content_type: str)`. Same bytes as entry.build_records.
#[pyfunction]
fn build_records<'py>(
    py: Python<'py>,
    fixed: &[u8],
    first_seq: u64,
    middle: &[u8],
    prev_hash: &[u8],
    items: &Bound<'py, PyList>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let prev: Hash = prev_hash
        .try_into()
        .map_err(|_| PyValueError::new_err("prev_hash must be 32 bytes"))?;
    let count = items.len();
    if count > 0 && first_seq.checked_add(count as u64 - 1).is_none() {
        return Err(PyValueError::new_err("seq out of range"));
    }
    // Borrow every field first (the list keeps the objects alive), then hash without the GIL.
    let mut held: Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyString>)> =
        Vec::with_capacity(count);
    for item in items.iter() {
        let t = item
            .downcast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("items must be tuples"))?;
        if t.len() != 3 {
            return Err(PyTypeError::new_err("items must be (payload, key, content_type)"));
        }
        let payload = t.get_item(0)?.downcast_into::<PyBytes>()?;
        let key = t.get_item(1)?.downcast_into::<PyBytes>()?;
        let ctype = t.get_item(2)?.downcast_into::<PyString>()?;
        held.push((payload, key, ctype));
    }
    let mut fields: Vec<(&[u8], &[u8], &[u8])> = Vec::with_capacity(count);
    for (payload, key, ctype) in &held {
        let ctype = ctype.to_str()?.as_bytes();
        if ctype.len() > MAX_CONTENT_TYPE {
            return Err(PyValueError::new_err("content type too long"));
        }
        if key.as_bytes().len() > MAX_KEY {
            return Err(PyValueError::new_err("key too long"));
        }
        fields.push((payload.as_bytes(), key.as_bytes(), ctype));
    }

    // Headers back to back in one buffer; header i is headers[ends[i-1]..ends[i]].
    let (headers, ends, leaves) = py.allow_threads(|| {
        let fixed_len = fixed.len() + 8 + middle.len();
        let total: usize = fields
            .iter()
            .map(|(_, key, ctype)| fixed_len + 1 + ctype.len() + 2 + key.len() + 72)
            .sum();
        let mut headers: Vec<u8> = Vec::with_capacity(total);
        let mut ends: Vec<usize> = Vec::with_capacity(count);
        let mut leaves: Vec<Hash> = Vec::with_capacity(count);
        let mut prev = prev;
        let mut seq = first_seq;
        for (payload, key, ctype) in &fields {
            let start = headers.len();
            headers.extend_from_slice(fixed);
            headers.extend_from_slice(&seq.to_be_bytes());
            headers.extend_from_slice(middle);
            headers.push(ctype.len() as u8);
            headers.extend_from_slice(ctype);
            headers.extend_from_slice(&(key.len() as u16).to_be_bytes());
            headers.extend_from_slice(key);
            headers.extend_from_slice(&prev);
            headers.extend_from_slice(&sha256(payload));
            headers.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            prev = leaf_hash(&headers[start..]);
            leaves.push(prev);
            ends.push(headers.len());
            seq = seq.wrapping_add(1);
        }
        (headers, ends, leaves)
    });

    let records = PyList::empty(py);
    let mut start = 0usize;
    for ((payload, _, _), end) in fields.iter().zip(&ends) {
        let header = &headers[start..*end];
        let record = PyBytes::new_with(py, header.len() + payload.len(), |buf| {
            buf[..header.len()].copy_from_slice(header);
            buf[header.len()..].copy_from_slice(payload);
            Ok(())
        })?;
        records.append(record)?;
        start = *end;
    }
    Ok((records, hashes_to_list(py, &leaves)?))
}

/// `compact_append_runs(hashes, size, leaves) -> (new_hashes, runs)`: append `leaves` to the
/// compact range of `size` leaves with perfect-subtree `hashes` (largest first), the nodes they
/// complete grouped by level: `runs` is one `(level, first_index, hashes)` per
/// level, `hashes` the 32-byte hashes of indexes `first_index, first_index+1, ...` back to
/// back (consecutive leaves complete consecutive nodes on every level), levels ascending.
#[pyfunction]
fn compact_append_runs<'py>(
    py: Python<'py>,
    hashes: &Bound<'py, PyList>,
    size: u64,
    leaves: &Bound<'py, PyList>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let mut range = hashes_from_list(hashes, "tree hash")?;
    check_range(&range, size)?;
    let new_leaves = hashes_from_list(leaves, "leaf hash")?;
    if size.checked_add(new_leaves.len() as u64).is_none() {
        return Err(PyValueError::new_err("tree size out of range"));
    }
    let mut size = size;
    let count = new_leaves.len();
    // runs[level] = (first index, next index, hashes)
    let mut runs: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    py.allow_threads(|| {
        for leaf in new_leaves {
            push_leaf(&mut range, &mut size, leaf, |level, index, h| {
                let level = level as usize;
                if runs.len() == level {
                    let expected = (count >> level) + 2;
                    runs.push((index, index, Vec::with_capacity(expected * 32)));
                }
                let run = &mut runs[level];
                debug_assert_eq!(run.1, index, "nodes of one level come in index order");
                run.1 = index + 1;
                run.2.extend_from_slice(h);
            });
        }
    });
    let out = PyList::empty(py);
    for (level, (first, _, blob)) in runs.iter().enumerate() {
        out.append((level as u32, *first, PyBytes::new(py, blob)))?;
    }
    Ok((hashes_to_list(py, &range)?, out))
}

/// `(seq, prev_hash, payload_hash, payload_size, header_end)` of a v1 header.
type Fields<'a> = (u64, &'a [u8], &'a [u8], u64, usize);

/// Below this many bytes a chunk is hashed on the calling thread alone.
const PARALLEL_BYTES: usize = 1 << 20;
/// Threads hashing one chunk at most.
const MAX_THREADS: usize = 8;
/// Bytes of records per unit of work handed to a hashing thread.
const BLOCK_BYTES: usize = 256 << 10;

/// `(payload intact, leaf hash)` of records whose header parsed (`fields[i]` is Some):
/// intact means the payload has the committed size and SHA-256. Large inputs are hashed by
/// one thread per core; the results do not depend on how the work is shared.
fn hash_records(values: &[&[u8]], fields: &[Option<Fields<'_>>]) -> Vec<(bool, Hash)> {
    let one = |v: &[u8], f: &Option<Fields<'_>>| -> (bool, Hash) {
        let (_, _, payload_hash, payload_size, end) = f.expect("only parsed records are hashed");
        let intact =
            (v.len() - end) as u64 == payload_size && sha256(&v[end..]) == payload_hash;
        (intact, leaf_hash(&v[..end]))
    };
    let serial = |values: &[&[u8]], fields: &[Option<Fields<'_>>], out: &mut [(bool, Hash)]| {
        for ((v, f), o) in values.iter().zip(fields).zip(out.iter_mut()) {
            *o = one(v, f);
        }
    };
    let mut out = vec![(false, [0u8; 32]); values.len()];
    let total: usize = values.iter().map(|v| v.len()).sum();
    let threads = if total < PARALLEL_BYTES {
        1
    } else {
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores = *CORES.get_or_init(|| {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        });
        cores.min(MAX_THREADS).min(values.len())
    };
    if threads <= 1 {
        serial(values, fields, &mut out);
        return out;
    }
    // Blocks of about BLOCK_BYTES handed out one at a time to whichever thread is free (the
    // caller's included): a helper that the OS does not run holds up one block, not half.
    let per_block = (BLOCK_BYTES * values.len() / total).max(1);
    let blocks = std::sync::Mutex::new(
        values.chunks(per_block).zip(fields.chunks(per_block)).zip(out.chunks_mut(per_block)),
    );
    let work = || loop {
        let next = blocks.lock().map(|mut it| it.next());
        match next {
            Ok(Some(((vs, fs), part))) => serial(vs, fs, part),
            _ => break,
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    out
}

/// The fields of a v1 header that start with `prefix`: `(seq, prev_hash, payload_hash,
/// payload_size, header_end)`, or None exactly when entry.chain_fields returns None.
#[inline]
fn chain_fields<'a>(record: &'a [u8], prefix: &[u8]) -> Option<Fields<'a>> {
    if !record.starts_with(prefix) {
        return None;
    }
    let mut pos = prefix.len();
    let seq = u64::from_be_bytes(record.get(pos..pos + 8)?.try_into().ok()?);
    pos += 16; // seq, timestamp
    pos += 1 + *record.get(pos)? as usize; // producer
    pos += 1 + *record.get(pos)? as usize; // content type
    let key_len = ((*record.get(pos)? as usize) << 8) | *record.get(pos + 1)? as usize;
    pos += 2 + key_len;
    let end = pos + 72;
    if record.len() < end {
        return None;
    }
    let size = u64::from_be_bytes(record[pos + 64..end].try_into().ok()?);
    Some((seq, &record[pos..pos + 32], &record[pos + 32..pos + 64], size, end))
}

fn record_value<'py>(record: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    if let Ok(b) = record.downcast::<PyBytes>() {
        return Some(b.clone()); // a record's value on its own (verify._fast_run's chunks)
    }
    let value = match record.downcast::<PyTuple>() {
        Ok(t) => t.get_item(1).ok()?,
        Err(_) => record.getattr("value").ok()?,
    };
    value.downcast_into::<PyBytes>().ok()
}

/// `verify_run(records, prefix, expected, prev, hashes, size, next_cp)
///     -> (accepted, expected, prev, hashes, size)`
///
/// Accepts `records[i]` (StoredRecord tuples, whose `value` is read, or values as bytes) while it continues the chain
/// (starts with `prefix`, seq == expected, prev_hash == prev, payload of the committed size
/// and SHA-256) and `records[i + 1]` exists and links to it (seq + 1, prev_hash == its leaf
/// hash), pushing each accepted leaf onto the compact range. Stops before the first record
/// that does not qualify, and before the leaf that would make the tree size `next_cp` (so the
/// caller checks that checkpoint). Exactly verify.PartitionVerifier._fast_run's rule.
#[pyfunction]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn verify_run<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    prefix: &[u8],
    expected: u64,
    prev: &[u8],
    hashes: &Bound<'py, PyList>,
    size: u64,
    next_cp: i64,
) -> PyResult<(usize, u64, Bound<'py, PyBytes>, Bound<'py, PyList>, u64)> {
    let mut range = hashes_from_list(hashes, "tree hash")?;
    check_range(&range, size)?;
    // Records up to the first value that is not bytes: the run cannot go past it.
    let mut held: Vec<Bound<'py, PyBytes>> = Vec::with_capacity(records.len());
    for record in records.iter() {
        match record_value(&record) {
            Some(v) => held.push(v),
            None => break,
        }
    }
    let values: Vec<&[u8]> = held.iter().map(|v| v.as_bytes()).collect();
    let stop_size: Option<u64> = u64::try_from(next_cp).ok().and_then(|n| n.checked_sub(1));

    let (accepted, expected, last_leaf, size) = py.allow_threads(|| {
        // Record i can only be accepted while records 0..=i parse and i + 1 exists, and no
        // more than the leaves left before the checkpoint size: hash just those (in
        // parallel), then apply the rule record by record exactly as before.
        let fields: Vec<Option<Fields<'_>>> = values.iter().map(|v| chain_fields(v, prefix)).collect();
        let budget = match stop_size {
            Some(stop) if stop >= size => usize::try_from(stop - size).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let parsed = fields.iter().position(|f| f.is_none()).unwrap_or(fields.len());
        let lim = values.len().saturating_sub(1).min(budget).min(parsed);
        let hashed = hash_records(&values[..lim], &fields[..lim]);

        let mut expected = expected;
        let mut size = size;
        let mut last_leaf: Option<Hash> = None;
        let mut i = 0usize;
        while i < lim {
            if Some(size) == stop_size {
                break;
            }
            let Some((seq, prev_hash, ..)) = fields[i] else {
                break;
            };
            let prev_now: &[u8] = match &last_leaf {
                Some(h) => h,
                None => prev,
            };
            let (payload_ok, leaf) = hashed[i];
            if seq != expected || prev_hash != prev_now || !payload_ok {
                break;
            }
            match (fields[i + 1], expected.checked_add(1)) {
                (Some((nseq, nprev, ..)), Some(want)) if nseq == want && nprev == leaf => {}
                _ => break,
            }
            push_leaf(&mut range, &mut size, leaf, |_, _, _| {});
            expected += 1;
            last_leaf = Some(leaf);
            i += 1;
        }
        (i, expected, last_leaf, size)
    });
    let prev_out = match &last_leaf {
        Some(h) => PyBytes::new(py, h),
        None => PyBytes::new(py, prev),
    };
    Ok((accepted, expected, prev_out, hashes_to_list(py, &range)?, size))
}

/// `unpack_messages(messages) -> (offsets, values)`: `message.offset()` and
/// `message.value()` of every message whose value is not None, in order (the Kafka
/// read-ahead's loop, without building anything per message). Any object with those two
/// methods will do; an exception from one of them is raised as is.
#[pyfunction]
fn unpack_messages<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let value_name = intern!(py, "value");
    let offset_name = intern!(py, "offset");
    let mut offsets: Vec<Bound<'py, PyAny>> = Vec::with_capacity(messages.len());
    let mut values: Vec<Bound<'py, PyAny>> = Vec::with_capacity(messages.len());
    for message in messages.iter() {
        let value = message.call_method0(value_name)?;
        if value.is_none() {
            continue;
        }
        offsets.push(message.call_method0(offset_name)?);
        values.push(value);
    }
    Ok((PyList::new(py, offsets)?, PyList::new(py, values)?))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ABI", ABI)?;
    m.add_function(wrap_pyfunction!(build_records, m)?)?;
    m.add_function(wrap_pyfunction!(compact_append_runs, m)?)?;
    m.add_function(wrap_pyfunction!(verify_run, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_messages, m)?)?;
    Ok(())
}
