//! Just enough of a BTF reader to find struct member offsets in the running kernel's type
//! information (`/sys/kernel/btf/vmlinux`), so the eBPF programs can read kernel structs on
//! any kernel with BTF (aya-ebpf has no CO-RE field relocations).
//!
//! Sans-IO: [`Btf::parse`] takes the bytes. Members are looked up by a dotted path from a
//! named struct (`sock.__sk_common.skc_family`); anonymous struct/union members are searched
//! through, as C does. Format: <https://docs.kernel.org/bpf/btf.html>.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why BTF could not be read or a member not found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    /// The blob is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// No struct of that name.
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    /// The struct has no such member (path as asked).
    #[error("no member {0} in the kernel's BTF")]
    NoMember(String),
    /// The member is a bitfield or not byte-aligned: a probe read cannot fetch it.
    #[error("member {0} is a bitfield")]
    Bitfield(String),
}

/// A type's fixed 12-byte header.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    /// `size` for ints, structs, unions, enums, floats; the referenced type otherwise.
    size_or_type: u32,
    kind_flag: bool,
    vlen: usize,
    /// Where the kind-specific data after the header starts in the type section.
    extra: usize,
}

/// Parsed type information, borrowing the blob: an index of where each type starts and the
/// structs by name. Nothing per type is decoded up front, so the agent's peak memory while
/// loading is the blob plus 4 bytes per type (vmlinux BTF has ~150,000 types).
pub struct Btf<'a> {
    type_data: &'a [u8],
    strings: &'a [u8],
    /// Type id → byte offset of its header in `type_data` (id 0, void, is not stored).
    starts: Vec<u32>,
    structs: HashMap<&'a str, u32>,
}

/// A member found by [`Btf::member`]: where it is and how big.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Byte offset from the start of the outer struct.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

/// Reads the header of the type at `at`; the data it names was bounds-checked at parse.
fn header(type_data: &[u8], at: usize) -> Result<Type, BtfError> {
    let name_off = u32_at(type_data, at)?;
    let info = u32_at(type_data, at + 4)?;
    let size_or_type = u32_at(type_data, at + 8)?;
    Ok(Type {
        kind: (info >> 24) & 0x1f,
        name_off,
        size_or_type,
        kind_flag: info >> 31 == 1,
        vlen: (info & 0xffff) as usize,
        extra: at + 12,
    })
}

/// Bytes of kind-specific data after a type's header.
fn extra_len(t: &Type, id: usize) -> Result<usize, BtfError> {
    Ok(match t.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => t.vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => t.vlen * 8,
        other => {
            return Err(BtfError::Malformed(format!(
                "unknown kind {other} for type {id}"
            )));
        }
    })
}

fn name_at(strings: &[u8], off: u32) -> &str {
    let Some(rest) = strings.get(off as usize..) else {
        return "";
    };
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob (what `/sys/kernel/btf/vmlinux` holds on x86_64 and
    /// arm64).
    pub fn parse(data: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() => Ok(&data[s..e]),
                _ => Err(BtfError::Malformed("section out of bounds".into())),
            }
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        let mut starts = Vec::new();
        let mut structs = HashMap::new();
        let mut at = 0;
        while at < type_data.len() {
            let t = header(type_data, at)?;
            let id = starts.len() + 1;
            let next = t.extra + extra_len(&t, id)?;
            if next > type_data.len() {
                return Err(BtfError::Malformed("type section cut short".into()));
            }
            let start = u32::try_from(at)
                .map_err(|_| BtfError::Malformed("type section over 4 GiB".into()))?;
            starts.push(start);
            // The first complete definition wins (forward declarations are KIND_FWD).
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                structs
                    .entry(name_at(strings, t.name_off))
                    .or_insert(id as u32);
            }
            at = next;
        }
        Ok(Btf {
            type_data,
            strings,
            starts,
            structs,
        })
    }

    fn name(&self, off: u32) -> &'a str {
        name_at(self.strings, off)
    }

    fn get(&self, id: u32) -> Option<Type> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)?;
        header(self.type_data, at as usize).ok()
    }

    /// Member `idx` of a struct/union (or the element of an array, idx 0):
    /// `(name_off, type, offset)` (for arrays: `(0, elem type, nelems)`).
    fn member_at(&self, t: &Type, idx: usize) -> Option<(u32, u32, u32)> {
        match t.kind {
            KIND_ARRAY if idx == 0 => {
                let elem = u32_at(self.type_data, t.extra).ok()?;
                let nelems = u32_at(self.type_data, t.extra + 8).ok()?;
                Some((0, elem, nelems))
            }
            KIND_STRUCT | KIND_UNION if idx < t.vlen => {
                let m = t.extra + idx * 12;
                Some((
                    u32_at(self.type_data, m).ok()?,
                    u32_at(self.type_data, m + 4).ok()?,
                    u32_at(self.type_data, m + 8).ok()?,
                ))
            }
            _ => None,
        }
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    fn size(&self, id: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let t = self.get(self.resolve(id))?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (_, elem, nelems) = self.member_at(&t, 0)?;
                self.size(elem, depth + 1)?.checked_mul(nelems)
            }
            _ => None,
        }
    }

    /// Finds `name` among the members of struct/union `id`, descending into anonymous
    /// members. Returns (bit offset from the start of `id`, member type, bitfield size).
    fn find(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32, u32)> {
        if depth > 8 {
            return None;
        }
        let t = self.get(self.resolve(id))?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for idx in 0..t.vlen {
            let (name_off, ty, offset) = self.member_at(&t, idx)?;
            let (bit_off, bitfield) = if t.kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            if name_off == 0 {
                if let Some((inner, ty, bits)) = self.find(ty, name, depth + 1) {
                    return Some((bit_off + inner, ty, bits));
                }
            } else if self.name(name_off) == name {
                return Some((bit_off, ty, bitfield));
            }
        }
        None
    }

    /// The offset and size of `path` (`member` or `member.inner..`) inside `struct name`.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<MemberInfo, BtfError> {
        let full = || format!("{struct_name}.{path}");
        let mut id = *self
            .structs
            .get(struct_name)
            .ok_or_else(|| BtfError::NoStruct(struct_name.to_string()))?;
        let mut bits = 0u32;
        let mut ty = id;
        for part in path.split('.') {
            let (off, member_ty, bitfield) = self
                .find(id, part, 0)
                .ok_or_else(|| BtfError::NoMember(full()))?;
            if bitfield != 0 {
                return Err(BtfError::Bitfield(full()));
            }
            bits += off;
            ty = member_ty;
            id = member_ty;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield(full()));
        }
        let size = self.size(ty, 0).ok_or_else(|| BtfError::NoMember(full()))?;
        Ok(MemberInfo {
            offset: bits / 8,
            size,
        })
    }

    /// Whether the kernel has a BTF-enabled tracepoint `name` (a `btf_trace_<name>` typedef).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        let want = format!("btf_trace_{name}");
        (1..=self.starts.len() as u32).any(|id| {
            self.get(id)
                .is_some_and(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == want)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_type, extra words) entries.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size: u32, extra: &[u32]) {
            let name = self.s(name);
            let info = vlen | (kind << 24) | (u32::from(kflag) << 31);
            for w in [name, info, size].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// 1: int (4), 2: u64 (8), 3: ptr, 4: struct inner { int a; u64 b; } (anon in 5),
    /// 5: struct outer { int x; union/struct anon (offset 64 bits); char name[16] }, 6: char,
    /// 7: char[16], 8: typedef outer_t, 9: struct bits (kflag) with a bitfield.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("int", KIND_INT, 0, false, 4, &[32]); // 1
        b.ty("u64", KIND_INT, 0, false, 8, &[64]); // 2
        b.ty("", KIND_PTR, 0, false, 5, &[]); // 3
        let a = b.s("a");
        let bb = b.s("b");
        b.ty("", KIND_STRUCT, 2, false, 16, &[a, 1, 0, bb, 2, 64]); // 4 (anonymous)
        let x = b.s("x");
        let name = b.s("name");
        let next = b.s("next");
        b.ty(
            "outer",
            KIND_STRUCT,
            4,
            false,
            40,
            &[x, 1, 0, 0, 4, 64, name, 7, 192, next, 3, 256],
        ); // 5
        b.ty("char", KIND_INT, 0, false, 1, &[8]); // 6
        b.ty("", KIND_ARRAY, 0, false, 0, &[6, 1, 16]); // 7
        b.ty("outer_t", KIND_TYPEDEF, 0, false, 5, &[]); // 8
        let flag = b.s("flag");
        let whole = b.s("whole");
        b.ty(
            "bits",
            KIND_STRUCT,
            2,
            true,
            8,
            &[flag, 1, (3 << 24) | 5, whole, 1, 32],
        ); // 9
        b.ty("btf_trace_thing", KIND_TYPEDEF, 0, false, 3, &[]); // 10
        b.finish()
    }

    #[test]
    fn finds_members_through_anonymous_structs_and_paths() {
        let blob = sample();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(
            btf.member("outer", "x").unwrap(),
            MemberInfo { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "a").unwrap(),
            MemberInfo { offset: 8, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "b").unwrap(),
            MemberInfo {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "name").unwrap(),
            MemberInfo {
                offset: 24,
                size: 16
            }
        );
        assert_eq!(
            btf.member("outer", "next").unwrap(),
            MemberInfo {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(
            btf.member("bits", "whole").unwrap(),
            MemberInfo { offset: 4, size: 4 }
        );
        assert!(btf.has_tracepoint("thing"));
        assert!(!btf.has_tracepoint("other"));
    }

    #[test]
    fn missing_and_bitfield_members_are_errors() {
        let blob = sample();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(
            btf.member("nope", "x"),
            Err(BtfError::NoStruct("nope".into()))
        );
        assert_eq!(
            btf.member("outer", "y"),
            Err(BtfError::NoMember("outer.y".into()))
        );
        assert_eq!(
            btf.member("outer", "x.z"),
            Err(BtfError::NoMember("outer.x.z".into()))
        );
        assert_eq!(
            btf.member("bits", "flag"),
            Err(BtfError::Bitfield("bits.flag".into()))
        );
    }

    #[test]
    fn hostile_blobs_are_errors_not_panics() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0]).is_err());
        let good = sample();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        let mut bad_kind = good.clone();
        bad_kind[24 + 7] = 0x1f; // kind 31 in the first type's info
        assert!(Btf::parse(&bad_kind).is_err());
    }

    /// The running kernel, when it has BTF: the members the programs read are all there.
    #[test]
    fn this_kernel_has_the_members_we_read() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            println!("skipped: no /sys/kernel/btf/vmlinux on this host");
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        let tgid = btf.member("task_struct", "tgid").unwrap();
        assert_eq!(tgid.size, 4);
        assert_eq!(btf.member("task_struct", "comm").unwrap().size, 16);
        assert_eq!(
            btf.member("sock", "__sk_common.skc_family").unwrap().size,
            2
        );
        assert_eq!(btf.member("sock", "__sk_common.skc_daddr").unwrap().size, 4);
        assert_eq!(btf.member("kernfs_node", "id").unwrap().size, 8);
        assert!(btf.has_tracepoint("sched_process_exec"));
    }
}
