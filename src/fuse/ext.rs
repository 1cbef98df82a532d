//! Request extensions (FUSE 7.38+): records that trail a request's arguments, `total_extlen`
//! 8-byte units of them (the header says how many). Each starts with `{ size, type }`; a type of
//! at most `MAX_NR_SECCTX` makes the record a security-context header whose type is the number
//! of contexts that follow (FUSE_SECURITY_CTX, for MKNOD, MKDIR, SYMLINK, CREATE). Pure: bytes in,
//! slices out.

use std::ffi::CStr;

use super::DecodeError;
use super::abi::InHeader;

/// Types up to this are security-context headers (include/uapi/linux/fuse.h).
const MAX_NR_SECCTX: u32 = 31;

/// A security context the guest's LSM chose for a new object: an xattr name and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecCtx<'a> {
    pub name: &'a CStr,
    pub value: &'a [u8],
}

/// The extension area of a whole request (empty when there is none or it does not fit: the
/// decoder refuses such a request anyway).
pub fn extensions(msg: &[u8]) -> &[u8] {
    let Ok(h) = super::Request::header_of(msg) else { return &[] };
    let ext = h.total_extlen as usize * 8;
    let body = &msg[size_of::<InHeader>().min(msg.len())..];
    body.len().checked_sub(ext).map_or(&[], |start| &body[start..])
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The first security context in `ext`, if any record carries one.
pub fn security_context(ext: &[u8]) -> Result<Option<SecCtx<'_>>, DecodeError> {
    let bad = || DecodeError::BadExtensions(ext.len());
    let mut rest = ext;
    while !rest.is_empty() {
        let size = u32_at(rest, 0).ok_or_else(bad)? as usize;
        let kind = u32_at(rest, 4).ok_or_else(bad)?;
        if size < 8 || !size.is_multiple_of(8) || size > rest.len() {
            return Err(bad());
        }
        let (record, next) = rest.split_at(size);
        rest = next;
        if kind == 0 || kind > MAX_NR_SECCTX {
            continue; // no context, or another extension (supplementary group): not ours
        }
        // struct fuse_secctx { size, padding }, then the NUL-terminated name, then the value.
        let body = &record[8..];
        let value_len = u32_at(body, 0).ok_or_else(bad)? as usize;
        let after = body.get(8..).ok_or_else(bad)?;
        let name = CStr::from_bytes_until_nul(after).map_err(|_| bad())?;
        let start = name.to_bytes_with_nul().len();
        let value = after.get(start..start.checked_add(value_len).ok_or_else(bad)?).ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        return Ok(Some(SecCtx { name, value }));
    }
    Ok(None)
}

/// One security-context extension record as the kernel writes it (for tests and frontends).
#[cfg(any(test, feature = "test-utils"))]
pub fn encode_security_context(name: &CStr, value: &[u8]) -> Vec<u8> {
    let payload = 8 + name.to_bytes_with_nul().len() + value.len();
    let total = (8 + payload).next_multiple_of(8);
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(&(total as u32).to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(value.len() as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(name.to_bytes_with_nul());
    v.extend_from_slice(value);
    v.resize(total, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_security_context_round_trip_and_other_records() {
        let rec = encode_security_context(c"security.selinux", b"system_u:object_r:tmp_t:s0\0");
        assert_eq!(rec.len() % 8, 0);
        let got = security_context(&rec).unwrap().unwrap();
        assert_eq!((got.name, got.value), (c"security.selinux", &b"system_u:object_r:tmp_t:s0\0"[..]));
        // An empty context header (no LSM chose one) and a supplementary-group record are skipped.
        let mut both = [8u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        both.extend_from_slice(&[16, 0, 0, 0, 32, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(security_context(&both).unwrap(), None);
        both.extend_from_slice(&rec);
        assert_eq!(security_context(&both).unwrap().unwrap().name, c"security.selinux");
    }

    #[test]
    fn test_security_context_refuses_malformed_records() {
        let rec = encode_security_context(c"security.x", b"v");
        for bad in [
            &rec[..4],                                  // short header
            &rec[..rec.len() - 8],                      // size beyond the area
            &[4, 0, 0, 0, 1, 0, 0, 0][..],              // size below the header
            &[12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..], // size not a multiple of 8
        ] {
            assert!(security_context(bad).is_err(), "{bad:?}");
        }
        // A value longer than the record.
        let mut long = rec.clone();
        long[8] = 200;
        assert!(security_context(&long).is_err());
        // A name without its NUL.
        let unterminated = [16u32.to_le_bytes(), 1u32.to_le_bytes(), 0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        assert!(security_context(&unterminated).is_err());
    }
}
